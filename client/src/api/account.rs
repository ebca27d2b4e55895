//! Ending sessions. Logging in lives with the connection in `client.rs`.

use courier_protocol::{Frame, Logout, LogoutAll};

use crate::{Client, Result};

impl Client {
    /// Revokes this device's token; the server closes the connection and the session ends.
    pub fn logout(&self) -> Result<()> {
        self.end_with(Frame::Logout(Logout {}))
    }

    /// Revokes every token of the user: every device is disconnected.
    pub fn logout_all(&self) -> Result<()> {
        self.end_with(Frame::LogoutAll(LogoutAll {}))
    }

    fn end_with(&self, frame: Frame) -> Result<()> {
        let request = frame.name();
        // No reconnect for the close that follows.
        self.begin_end();
        let result = match self.call(frame)? {
            Frame::Done(_) => Ok(()),
            other => Err(crate::Error::UnexpectedReply {
                request,
                reply: other.name(),
            }),
        };
        self.close();
        result
    }
}
