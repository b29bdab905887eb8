//! The teardown order is a typestate: trybuild proves that the wrong orders
//! (executor dropped first, also the executors of a context attached to a set
//! of them, context used after destroy, drain twice, Drain ignored) do not
//! compile, and that the right orders (one executor, a set) do.

#[test]
fn teardown_order_is_enforced_by_types() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/compile-fail/*.rs");
    t.pass("tests/compile-pass/*.rs");
}
