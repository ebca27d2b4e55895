//! One-shot subcommands: connect, resume the saved session, do one thing, print, exit.

use courier_client::protocol::Direction;
use courier_client::{Client, ClientConfig, ErrorCode, UserInfo};
use serde_json::{json, Value};

use crate::config::CliConfig;
use crate::error::CliError;
use crate::output::*;
use crate::{
    encryption, learned_key, prompt, server_addr, Cli, CliResult, Command, ContactsCommand,
    GroupCommand, PushCommand,
};

/// The device name the CLI logs in with, so its token is the CLI's own.
pub const DEVICE: &str = "courier-cli";

/// Runs one subcommand.
pub fn run(cli: &Cli, command: &Command) -> CliResult {
    let mut cfg = CliConfig::load()?;
    let server = server_addr(cli, &cfg);
    match command {
        Command::Register { handle, password } | Command::Login { handle, password } => {
            let register = matches!(command, Command::Register { .. });
            let password = match password {
                Some(p) => p.clone(),
                None => prompt::password(&format!("password for {handle}: "))?
                    .ok_or_else(|| CliError::Usage("no password given".into()))?,
            };
            let client = connect(cli, &server)?;
            let auth = if register {
                client.register(handle, &password)
            } else {
                client.login(handle, &password)
            }
            .map_err(|e| CliError::for_account(e, handle))?;
            cfg.remember_auth(&client.server_addr(), &auth);
            // A `sync` from here on shows what is new since this login.
            if cfg.watermark.is_none() {
                cfg.remember_watermark(&client);
            }
            cfg.save()?;
            let verb = if register {
                "registered and logged in"
            } else {
                "logged in"
            };
            print(
                cli,
                json!({ "user": auth.user, "handle": auth.handle, "device": auth.device, "server": client.server_addr() }),
                || {
                    format!(
                        "{verb} as {} (user {}) on {}",
                        auth.handle,
                        auth.user,
                        client.server_addr()
                    )
                },
            );
        }
        Command::Logout => {
            let client = session(cli, &server, &cfg)?;
            client.logout()?;
            cfg.forget_auth();
            cfg.save()?;
            print(cli, json!({ "logged_out": true }), || "logged out".into());
        }
        Command::Send {
            to,
            thread,
            reply_to,
            text,
        } => {
            let client = session(cli, &server, &cfg)?;
            let thread = match (to, thread) {
                (_, Some(t)) => *t,
                (Some(handle), None) => {
                    let peer = lookup(&client, &mut cfg, handle)?;
                    client.open_direct(peer.id)?.id
                }
                (None, None) => {
                    return Err(CliError::Usage("give --to HANDLE or --thread N".into()))
                }
            };
            let sent = match reply_to {
                Some(to) => client.send_reply(thread, *to, &text.join(" "))?,
                None => client.send_text(thread, &text.join(" "))?,
            };
            cfg.save()?;
            print(
                cli,
                json!({ "thread": sent.thread, "message": sent.message, "client_msg_id": sent.client_msg_id }),
                || format!("sent ✓ (thread #{}, message {})", sent.thread, sent.message),
            );
        }
        Command::Threads => {
            let client = session(cli, &server, &cfg)?;
            let threads = client.list_all_threads()?;
            let people = threads.iter().flat_map(|t| {
                let last = t.last_message.as_ref().map(mentioned).unwrap_or_default();
                last.into_iter().chain([t.peer])
            });
            learn_users(&client, &mut cfg, people);
            print(
                cli,
                Value::Array(threads.iter().map(|t| summary_json(t, &cfg)).collect()),
                || {
                    if threads.is_empty() {
                        return "no threads yet".into();
                    }
                    threads
                        .iter()
                        .map(|t| {
                            let last = t
                                .last_message
                                .as_ref()
                                .map(|m| body_text(m, &cfg))
                                .unwrap_or_default();
                            let unread = if t.unread > 0 {
                                format!(" ({} unread)", t.unread)
                            } else {
                                String::new()
                            };
                            format!(
                                "#{:<6} {}{unread}  {}",
                                t.id,
                                summary_name(t, &cfg),
                                preview(&last)
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                },
            );
        }
        Command::History { thread, limit } => {
            let client = session(cli, &server, &cfg)?;
            let mut page = client.history(*thread, 0, Direction::Backward, *limit)?;
            page.messages.reverse();
            learn_users(&client, &mut cfg, page.messages.iter().flat_map(mentioned));
            let meta = |id: u64| page.meta.iter().find(|x| x.id == id);
            let quoted = |id: u64| {
                let to = meta(id)?.reply_to;
                let m = page.messages.iter().find(|m| m.id == to)?;
                Some(format!(
                    "{}: \"{}\"",
                    cfg.name(m.sender),
                    excerpt(&body_text(m, &cfg))
                ))
            };
            print(
                cli,
                Value::Array(
                    page.messages
                        .iter()
                        .map(|m| message_meta_json(m, meta(m.id), &cfg))
                        .collect(),
                ),
                || {
                    if page.messages.is_empty() {
                        return format!("no messages in thread #{thread}");
                    }
                    page.messages
                        .iter()
                        .map(|m| message_lines(m, meta(m.id), quoted(m.id).as_deref(), &cfg))
                        .collect::<Vec<_>>()
                        .join("\n")
                },
            );
        }
        Command::Group(GroupCommand::Create { name, members }) => {
            let client = session(cli, &server, &cfg)?;
            let ids = members
                .iter()
                .map(|h| lookup(&client, &mut cfg, h).map(|u| u.id))
                .collect::<Result<Vec<_>, _>>()?;
            let thread = client.create_group(name, &ids)?;
            cfg.save()?;
            print(cli, thread_json(&thread), || {
                format!("created group \"{name}\" as thread #{}", thread.id)
            });
        }
        Command::Group(GroupCommand::Add { thread, handles }) => {
            let client = session(cli, &server, &cfg)?;
            let ids = handles
                .iter()
                .map(|h| lookup(&client, &mut cfg, h).map(|u| u.id))
                .collect::<Result<Vec<_>, _>>()?;
            client.add_members(*thread, &ids)?;
            cfg.save()?;
            print(cli, json!({ "thread": thread, "added": ids }), || {
                format!("added {} to #{thread}", handles.join(", "))
            });
        }
        Command::Edit {
            thread,
            message,
            text,
        } => {
            let client = session(cli, &server, &cfg)?;
            client.edit(*thread, *message, text.join(" ").into_bytes())?;
            print(cli, json!({ "thread": thread, "edited": message }), || {
                format!("edited message {message}")
            });
        }
        Command::React {
            thread,
            message,
            reaction,
        } => {
            let client = session(cli, &server, &cfg)?;
            let reaction = reaction.as_deref().unwrap_or_default();
            client.react(*thread, *message, reaction)?;
            print(
                cli,
                json!({ "thread": thread, "message": message, "reaction": reaction }),
                || match reaction {
                    "" => format!("removed your reaction to message {message}"),
                    r => format!("reacted {r} to message {message}"),
                },
            );
        }
        Command::Recall { thread, message } => {
            let client = session(cli, &server, &cfg)?;
            client.recall(*thread, *message)?;
            print(
                cli,
                json!({ "thread": thread, "recalled": message }),
                || format!("recalled message {message}"),
            );
        }
        Command::Contacts(ContactsCommand::Add { handle }) => {
            let client = session(cli, &server, &cfg)?;
            let user = lookup(&client, &mut cfg, handle)?;
            client.contact_add(user.id)?;
            cfg.save()?;
            print(cli, user_json(&user), || {
                format!("added {handle} to your contacts")
            });
        }
        Command::Contacts(ContactsCommand::Remove { handle }) => {
            let client = session(cli, &server, &cfg)?;
            let user = lookup(&client, &mut cfg, handle)?;
            client.contact_remove(user.id)?;
            print(cli, user_json(&user), || {
                format!("removed {handle} from your contacts")
            });
        }
        Command::Push(PushCommand::Register {
            app_id,
            pushkey,
            platform,
            lang,
            data,
        }) => {
            let client = session(cli, &server, &cfg)?;
            client.register_push(app_id, pushkey, platform, lang, data)?;
            print(
                cli,
                json!({ "app_id": app_id, "pushkey": pushkey, "registered": true }),
                || format!("registered push key {pushkey} for {app_id}"),
            );
        }
        Command::Push(PushCommand::Unregister { app_id, pushkey }) => {
            let client = session(cli, &server, &cfg)?;
            client.unregister_push(app_id, pushkey)?;
            print(
                cli,
                json!({ "app_id": app_id, "pushkey": pushkey, "registered": false }),
                || format!("unregistered push key {pushkey} of {app_id}"),
            );
        }
        Command::Contacts(ContactsCommand::List) => {
            let client = session(cli, &server, &cfg)?;
            let users = client.contacts()?;
            for u in &users {
                cfg.learn(u.id, &u.handle);
            }
            cfg.save()?;
            print(
                cli,
                Value::Array(users.iter().map(user_json).collect()),
                || {
                    if users.is_empty() {
                        "no contacts yet".into()
                    } else {
                        users
                            .iter()
                            .map(|u| u.handle.clone())
                            .collect::<Vec<_>>()
                            .join("\n")
                    }
                },
            );
        }
        Command::Presence { handle } => {
            let client = session(cli, &server, &cfg)?;
            let user = lookup(&client, &mut cfg, handle)?;
            let entries = client.presence_query(&[user.id]).map_err(|e| match e.code() {
                Some(ErrorCode::NotContact) => {
                    CliError::Usage(format!("{handle} is not in your contacts: `courier-cli contacts add {handle}` first"))
                }
                _ => CliError::Client(e),
            })?;
            let p = entries
                .into_iter()
                .find(|p| p.user == user.id)
                .unwrap_or_default();
            print(cli, presence_json(&p, handle), || presence_text(&p, handle));
        }
        Command::Sync => {
            let client = session(cli, &server, &cfg)?;
            cfg.restore_watermark(&client);
            let result = client.sync()?;
            cfg.watermark = Some(result.watermark);
            cfg.watermarks = result.watermarks.clone();
            cfg.save()?;
            learn_users(
                &client,
                &mut cfg,
                result.messages.iter().flat_map(mentioned),
            );
            let meta = |id: u64| result.meta.iter().find(|x| x.id == id);
            let messages: Vec<Value> = result
                .messages
                .iter()
                .map(|m| message_meta_json(m, meta(m.id), &cfg))
                .collect();
            print(
                cli,
                json!({ "watermark": result.watermark, "threads": result.threads.iter().map(thread_json).collect::<Vec<_>>(), "messages": messages }),
                || {
                    let mut lines: Vec<String> = result
                        .messages
                        .iter()
                        .map(|m| {
                            let lines = message_lines(m, meta(m.id), None, &cfg);
                            format!("#{} {lines}", m.thread)
                        })
                        .collect();
                    lines.push(format!(
                        "{} new messages in {} threads",
                        result.messages.len(),
                        result.threads.len()
                    ));
                    lines.join("\n")
                },
            );
        }
        Command::Upload {
            file,
            mime,
            to,
            thread,
        } => {
            let client = session(cli, &server, &cfg)?;
            let media = client.upload_file(file, mime)?;
            let id = hex::encode(&media.media);
            let thread = match (to, thread) {
                (_, Some(t)) => Some(*t),
                (Some(handle), None) => {
                    let peer = lookup(&client, &mut cfg, handle)?;
                    Some(client.open_direct(peer.id)?.id)
                }
                (None, None) => None,
            };
            let sent = match thread {
                Some(t) => {
                    // The body: the media id, then the file's name as a caption.
                    let mut body = media.media.to_vec();
                    let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
                    body.extend_from_slice(name.unwrap_or_default().as_bytes());
                    Some(client.send(t, courier_client::protocol::MessageKind::Media, body)?)
                }
                None => None,
            };
            cfg.save()?;
            print(
                cli,
                json!({ "media": id, "total_len": media.total_len,
                        "thread": sent.as_ref().map(|s| s.thread),
                        "message": sent.as_ref().map(|s| s.message) }),
                || match &sent {
                    Some(s) => format!(
                        "uploaded {id} ({} bytes), sent to thread #{}",
                        media.total_len, s.thread
                    ),
                    None => format!("uploaded {id} ({} bytes)", media.total_len),
                },
            );
        }
        Command::Download { id, file, thread } => {
            let media = hex::decode(id)
                .ok()
                .filter(|m| m.len() == 32)
                .ok_or_else(|| CliError::Usage("a media id is 64 hex digits".into()))?;
            let client = session(cli, &server, &cfg)?;
            let total = client.download_file(&media, *thread, file)?;
            print(
                cli,
                json!({ "media": id, "total_len": total, "file": file.display().to_string() }),
                || format!("downloaded {total} bytes into {}", file.display()),
            );
        }
        Command::Chat => unreachable!("handled by main"),
    }
    Ok(())
}

/// Prints JSON with `--json`, the readable text otherwise.
fn print(cli: &Cli, json: Value, text: impl FnOnce() -> String) {
    if cli.json {
        println!("{json}");
    } else {
        println!("{}", text());
    }
}

fn preview(text: &str) -> String {
    let mut out: String = text.chars().take(50).collect();
    if text.chars().count() > 50 {
        out.push('…');
    }
    out
}

/// Connects without reconnecting: a one-shot command fails rather than waits.
pub fn connect(cli: &Cli, server: &str) -> CliResult<Client> {
    let config = ClientConfig::default()
        .with_device(DEVICE)
        .with_encryption(encryption(cli, server)?);
    let client = Client::connect(server, config)?;
    learned_key(cli, server, &client)?;
    Ok(client)
}

/// Connects and resumes the saved session.
pub fn session(cli: &Cli, server: &str, cfg: &CliConfig) -> CliResult<Client> {
    let token = cfg
        .token_for(server)
        .ok_or_else(|| CliError::NotLoggedIn(server.to_string()))?;
    let client = connect(cli, server)?;
    client.resume(&token).map_err(|e| match e.code() {
        Some(ErrorCode::InvalidToken | ErrorCode::SessionRevoked) => {
            CliError::SessionExpired(server.to_string())
        }
        _ => CliError::Client(e),
    })?;
    Ok(client)
}

/// Finds a user by handle and remembers the name.
pub fn lookup(client: &Client, cfg: &mut CliConfig, handle: &str) -> CliResult<UserInfo> {
    let user = client
        .lookup_user(handle)
        .map_err(|e| CliError::for_account(e, handle))?;
    cfg.learn(user.id, &user.handle);
    Ok(user)
}

/// Learns the handles of the users among `ids` not known yet (`GET_USERS`) and saves them;
/// best effort: an unknown name shows as `user#ID`.
pub fn learn_users(client: &Client, cfg: &mut CliConfig, ids: impl IntoIterator<Item = u64>) {
    let unknown = cfg.unknown(ids);
    if unknown.is_empty() {
        return;
    }
    if let Ok(users) = client.users(&unknown) {
        for u in &users {
            cfg.learn(u.id, &u.handle);
        }
        let _ = cfg.save();
    }
}
