//! `echo`: every text or binary message is sent back with the same opcode.

use crate::{Message, Protocol, Reject, Request, SessionHandle};

/// Sends every message back to its sender, text as text and binary as binary.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

impl Protocol for Echo {
    type State = ();

    fn name(&self) -> &str {
        "echo"
    }

    fn open(&self, _request: &Request, _session: &SessionHandle) -> Result<(), Reject> {
        Ok(())
    }

    fn message(&self, _state: &mut (), session: &SessionHandle, message: Message) {
        // The session stops reading while its queue is over the bound, so a
        // failure here means the peer is far behind; the vhost's overflow
        // policy has already decided its fate.
        let _ = session.try_send(message);
    }
}
