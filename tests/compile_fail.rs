//! The teardown order is a typestate: trybuild proves that the wrong orders
//! (executor dropped first, context used after destroy, drain twice, Drain
//! ignored) do not compile, and that the right order does.

#[test]
fn teardown_order_is_enforced_by_types() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/compile-fail/*.rs");
    t.pass("tests/compile-pass/*.rs");
}
