//! Logging in and out. The requests that authenticate are built here for both front ends;
//! sending them (redirects, the catch-up behind them) lives with each front end's connection
//! handling.

use courier_protocol::{Frame, Login, Logout, LogoutAll, Register, Resume};

use crate::{Client, ClientConfig, Error, Result};

/// `REGISTER` for this device.
pub(crate) fn register(config: &ClientConfig, handle: &str, password: &str) -> Frame {
    Register {
        handle: handle.into(),
        password: password.into(),
        device: config.device.clone(),
    }
    .into()
}

/// `LOGIN` for this device.
pub(crate) fn login(config: &ClientConfig, handle: &str, password: &str) -> Frame {
    Login {
        handle: handle.into(),
        password: password.into(),
        device: config.device.clone(),
    }
    .into()
}

/// `RESUME` with a saved token.
pub(crate) fn resume(token: &[u8]) -> Frame {
    Resume {
        token: token.to_vec().into(),
    }
    .into()
}

/// Checks the answer to `LOGOUT` / `LOGOUT_ALL`.
fn logged_out(request: &'static str, reply: Frame) -> Result<()> {
    match reply {
        Frame::Done(_) => Ok(()),
        other => Err(Error::UnexpectedReply {
            request,
            reply: other.name(),
        }),
    }
}

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
        let result = logged_out(request, self.call(frame)?);
        self.close();
        result
    }
}

#[cfg(feature = "tokio")]
impl crate::AsyncClient {
    /// Revokes this device's token; the server closes the connection and the session ends.
    pub async fn logout(&self) -> Result<()> {
        self.end_with(Frame::Logout(Logout {})).await
    }

    /// Revokes every token of the user: every device is disconnected.
    pub async fn logout_all(&self) -> Result<()> {
        self.end_with(Frame::LogoutAll(LogoutAll {})).await
    }

    async fn end_with(&self, frame: Frame) -> Result<()> {
        let request = frame.name();
        // No reconnect for the close that follows.
        self.begin_end();
        let result = logged_out(request, self.call(frame).await?);
        self.close();
        result
    }
}
