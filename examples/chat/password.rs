//! Password hashes: argon2id with the `argon2` crate's default parameters
//! and a random salt per account, computed on the blocking thread pool and
//! never on the loop. A hash takes tens of milliseconds of CPU and about
//! 19 MiB of memory, so only a few run at once (the host picks how many); the
//! others wait for a permit without holding a thread.

use std::sync::Arc;

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use async_channel::{Receiver, Sender};

use crate::command::Password;

/// Hashes and checks passwords off the loop.
pub(crate) struct Passwords {
    /// A semaphore: a hash holds a slot of this bounded channel while it runs.
    permits: (Sender<()>, Receiver<()>),
    /// The hash of a password nobody knows, to check unknown names against.
    dummy: Arc<str>,
}

impl Passwords {
    /// Computes the dummy hash with the same parameters as every other, so
    /// that a login for an unknown name costs what a wrong password costs.
    /// Blocking: the host calls it on the blocking pool before its loop runs.
    /// At most `concurrency` (at least 1) hashes run at once.
    pub(crate) fn new(concurrency: usize) -> Result<Self, argon2::password_hash::Error> {
        let dummy: PasswordHash =
            Argon2::default().hash_password(b"no account has this password")?;
        Ok(Self {
            permits: async_channel::bounded(concurrency.max(1)),
            dummy: dummy.to_string().into(),
        })
    }

    /// The PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`) for a new
    /// account.
    pub(crate) async fn hash(
        &self,
        password: Password,
    ) -> Result<String, argon2::password_hash::Error> {
        let _permit = self.permit().await;
        blocking::unblock(move || {
            let hash: PasswordHash = Argon2::default().hash_password(password.as_bytes())?;
            Ok(hash.to_string())
        })
        .await
    }

    /// Whether `password` matches `hash`. For an unknown name (`None`) it
    /// checks against the dummy hash and says no: the same work, the same
    /// answer. The comparison of the hashes is argon2's constant-time one.
    pub(crate) async fn verify(&self, password: Password, hash: Option<String>) -> bool {
        let _permit = self.permit().await;
        let known = hash.is_some();
        let hash = hash.map_or_else(|| self.dummy.clone(), Arc::from);
        blocking::unblock(move || {
            let matches = Argon2::default()
                .verify_password(password.as_bytes(), &*hash)
                .is_ok();
            matches && known
        })
        .await
    }

    async fn permit(&self) -> Permit<'_> {
        // The channel stays open while `self` lives, so this only waits.
        let _ = self.permits.0.send(()).await;
        Permit(&self.permits.1)
    }
}

/// A running hash; dropping it frees its slot.
struct Permit<'a>(&'a Receiver<()>);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let _ = self.0.try_recv();
    }
}
