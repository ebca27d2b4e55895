//! The typed requests, grouped by subject.
//!
//! Each request is declared once, in a [`requests!`] table: its arguments, how its frame is
//! built and how its reply is decoded. The macro writes the method for both front ends: the
//! blocking [`Client`](crate::Client) and, with the `tokio` feature, the
//! [`AsyncClient`](crate::AsyncClient). Operations made of several requests (paging, uploads,
//! logout) are written for each front end beside the table, on the shared pieces in the same
//! file.

/// Declares requests with one reply each; see the module docs. A row:
///
/// ```text
/// /// docs
/// fn name(arg: Type, ...) -> Output { request frame expression => ReplyVariant(pattern) => output expression }
/// ```
///
/// Any other reply is [`Error::UnexpectedReply`](crate::Error::UnexpectedReply);
/// `ERROR_REPLY` is [`Error::Server`](crate::Error::Server) (from `call`).
macro_rules! requests {
    ($(
        $(#[$attr:meta])*
        $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $out:ty {
            $request:expr => $variant:ident($reply:pat) => $value:expr
        }
    )*) => {
        impl $crate::Client {
            $(
                $(#[$attr])*
                $vis fn $name(&self, $($arg: $ty),*) -> $crate::Result<$out> {
                    let request: courier_protocol::Frame = $request.into();
                    let name = request.name();
                    match self.call(request)? {
                        courier_protocol::Frame::$variant($reply) => Ok($value),
                        other => Err($crate::Error::UnexpectedReply {
                            request: name,
                            reply: other.name(),
                        }),
                    }
                }
            )*
        }

        #[cfg(feature = "tokio")]
        impl $crate::AsyncClient {
            $(
                $(#[$attr])*
                $vis async fn $name(&self, $($arg: $ty),*) -> $crate::Result<$out> {
                    let request: courier_protocol::Frame = $request.into();
                    let name = request.name();
                    match self.call(request).await? {
                        courier_protocol::Frame::$variant($reply) => Ok($value),
                        other => Err($crate::Error::UnexpectedReply {
                            request: name,
                            reply: other.name(),
                        }),
                    }
                }
            )*
        }
    };
}

pub(crate) mod account;
mod admin;
mod contacts;
mod media;
mod messages;
mod push;
mod threads;
pub use messages::new_client_msg_id;
