//! Rendering: times, message bodies, JSON shapes for `--json`.

use courier_client::protocol::wire::{Reader, Wire};
use courier_client::protocol::{
    Message, MessageKind, MessageMeta, Presence, ReactionCount, SystemEvent, SystemEventKind,
    Thread, ThreadKind, ThreadSummary, UserInfo,
};
use serde_json::{json, Value};

use crate::config::CliConfig;

/// `YYYY-MM-DD HH:MM:SS` (UTC) from microseconds since the Unix epoch.
pub fn datetime(micros: u64) -> String {
    let secs = micros / 1_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `HH:MM` (UTC).
pub fn clock(micros: u64) -> String {
    datetime(micros)[11..16].to_string()
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The readable text of a message body.
pub fn body_text(m: &Message, cfg: &CliConfig) -> String {
    if m.recalled {
        return "(message recalled)".into();
    }
    match m.kind {
        MessageKind::Text => String::from_utf8_lossy(&m.body).into_owned(),
        MessageKind::Media => media_text(&m.body, m.thread),
        MessageKind::System => system_text(m, cfg),
    }
}

/// A MEDIA body: the 32-byte media id, then the sender's caption (the file name, from
/// `courier-cli upload`).
fn media_parts(body: &[u8]) -> Option<(&[u8], String)> {
    let id = body.get(..32)?;
    Some((id, String::from_utf8_lossy(&body[32..]).into_owned()))
}

fn media_text(body: &[u8], thread: u64) -> String {
    match media_parts(body) {
        Some((id, caption)) => format!(
            "(media {caption}; courier-cli download {} FILE --thread {thread})",
            hex::encode(id)
        ),
        None => format!("(media, {} bytes)", body.len()),
    }
}

fn system_text(m: &Message, cfg: &CliConfig) -> String {
    let Ok(ev) = SystemEvent::get(&mut Reader::new(m.body.clone()), "SystemEvent") else {
        return "(system event)".into();
    };
    let actor = cfg.name(ev.actor);
    match ev.event {
        SystemEventKind::Created => format!("* {actor} created the group \"{}\"", ev.text),
        SystemEventKind::MemberAdded if ev.users.len() > 1 => {
            let names: Vec<String> = ev.users.iter().map(|&u| cfg.name(u)).collect();
            format!("* {actor} added {}", names.join(", "))
        }
        SystemEventKind::MemberAdded => format!("* {actor} added {}", cfg.name(ev.subject)),
        SystemEventKind::MemberRemoved => format!("* {actor} removed {}", cfg.name(ev.subject)),
        SystemEventKind::MemberLeft => format!("* {} left", cfg.name(ev.subject.max(ev.actor))),
        SystemEventKind::Renamed => format!("* {actor} renamed the group to \"{}\"", ev.text),
        SystemEventKind::Recalled => format!("* {actor} recalled a message"),
        SystemEventKind::Edited => format!(
            "* {actor} edited a message: {}",
            String::from_utf8_lossy(&ev.body)
        ),
        SystemEventKind::Reacted if ev.text.is_empty() => {
            format!("* {actor} removed their reaction")
        }
        SystemEventKind::Reacted => format!("* {actor} reacted {}", ev.text),
    }
}

/// The event of a SYSTEM message, if it is one.
pub fn system_event(m: &Message) -> Option<SystemEvent> {
    (m.kind == MessageKind::System)
        .then(|| SystemEvent::get(&mut Reader::new(m.body.clone()), "SystemEvent").ok())
        .flatten()
}

/// A message's reactions on one line, e.g. `👍 2  😂 1`; empty for none.
pub fn reactions_text(reactions: &[ReactionCount]) -> String {
    reactions
        .iter()
        .map(|r| format!("{} {}", r.reaction, r.count))
        .collect::<Vec<_>>()
        .join("  ")
}

/// The first characters of a text, for quoting it on one line.
pub fn excerpt(text: &str) -> String {
    const MAX: usize = 40;
    let line = text.lines().next().unwrap_or_default();
    match line.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None if line.len() < text.len() => format!("{line}…"),
        None => line.to_string(),
    }
}

/// What a history line adds for a message's meta: ` (edited)`, then a reply line and a
/// reactions line, each indented under the message. `quoted` names the replied-to message
/// when it is known here.
pub fn meta_lines(meta: &MessageMeta, quoted: Option<&str>) -> (String, Vec<String>) {
    let mark = if meta.edited_at != 0 {
        " (edited)".to_string()
    } else {
        String::new()
    };
    let mut lines = Vec::new();
    if meta.reply_to != 0 {
        lines.push(match quoted {
            Some(q) => format!("    ↪ reply to {q}"),
            None => format!("    ↪ reply to #{}", meta.reply_to),
        });
    }
    if !meta.reactions.is_empty() {
        let mine = if meta.mine.is_empty() {
            String::new()
        } else {
            format!(" (you: {})", meta.mine)
        };
        lines.push(format!("    {}{mine}", reactions_text(&meta.reactions)));
    }
    (mark, lines)
}

/// The users a message names: its sender and, for a system message, who did what to whom.
pub fn mentioned(m: &Message) -> Vec<u64> {
    let mut ids = vec![m.sender];
    if m.kind == MessageKind::System {
        if let Ok(ev) = SystemEvent::get(&mut Reader::new(m.body.clone()), "SystemEvent") {
            ids.push(ev.actor);
            // Their subject is a message id, not a user.
            let about_a_message = matches!(
                ev.event,
                SystemEventKind::Recalled | SystemEventKind::Edited | SystemEventKind::Reacted
            );
            if !about_a_message {
                ids.push(ev.subject);
            }
            ids.extend(&ev.users);
        }
    }
    ids
}

/// A thread's display name: the label, else the server's name (the group's, or for a direct
/// thread the peer's handle), else the peer's handle as known here.
pub fn summary_name(t: &ThreadSummary, cfg: &CliConfig) -> String {
    if !t.label.is_empty() {
        t.label.clone()
    } else if !t.name.is_empty() || t.kind == ThreadKind::Group {
        t.name.clone()
    } else {
        cfg.name(t.peer)
    }
}

/// A full thread's display name from the viewpoint of `me`.
pub fn thread_name(t: &Thread, me: u64, cfg: &CliConfig) -> String {
    if !t.label.is_empty() {
        return t.label.clone();
    }
    if !t.name.is_empty() {
        // A group's name, or for a direct thread the other member's handle.
        return t.name.clone();
    }
    match t.kind {
        ThreadKind::Group => t.name.clone(),
        ThreadKind::Direct => t
            .members
            .iter()
            .find(|m| m.user != me)
            .map_or("(just you)".into(), |m| cfg.name(m.user)),
    }
}

/// One message as a history line.
pub fn message_line(m: &Message, cfg: &CliConfig) -> String {
    format!(
        "[{}] #{} {}: {}",
        datetime(m.id),
        m.id,
        cfg.name(m.sender),
        body_text(m, cfg)
    )
}

/// One message as history lines: the message (marked when edited), then what it replies to
/// and its reactions.
pub fn message_lines(
    m: &Message,
    meta: Option<&MessageMeta>,
    quoted: Option<&str>,
    cfg: &CliConfig,
) -> String {
    let line = message_line(m, cfg);
    match meta {
        None => line,
        Some(meta) => {
            let (mark, extra) = meta_lines(meta, quoted);
            std::iter::once(line + &mark)
                .chain(extra)
                .collect::<Vec<_>>()
                .join("\n")
        }
    }
}

/// `message_json` with the message's meta, if any.
pub fn message_meta_json(m: &Message, meta: Option<&MessageMeta>, cfg: &CliConfig) -> Value {
    let mut v = message_json(m, cfg);
    if let Some(meta) = meta {
        v["reply_to"] = json!(meta.reply_to);
        v["edited_at"] = json!(meta.edited_at);
        v["reactions"] = json!(meta
            .reactions
            .iter()
            .map(|r| json!({ "reaction": r.reaction, "count": r.count }))
            .collect::<Vec<_>>());
        v["my_reaction"] = json!(meta.mine);
    }
    v
}

pub fn message_json(m: &Message, cfg: &CliConfig) -> Value {
    let mut v = json!({
        "thread": m.thread,
        "id": m.id,
        "sender": m.sender,
        "sender_handle": cfg.users.get(&m.sender.to_string()),
        "client_msg_id": m.client_msg_id,
        "kind": format!("{:?}", m.kind).to_lowercase(),
        "recalled": m.recalled,
        "time": datetime(m.id),
    });
    match m.kind {
        MessageKind::Text => {
            v["text"] = Value::String(String::from_utf8_lossy(&m.body).into_owned())
        }
        MessageKind::System => v["text"] = Value::String(body_text(m, cfg)),
        MessageKind::Media => {
            v["body_hex"] = Value::String(hex::encode(&m.body));
            if let Some((id, caption)) = media_parts(&m.body) {
                v["media"] = Value::String(hex::encode(id));
                v["caption"] = Value::String(caption);
            }
        }
    }
    v
}

pub fn summary_json(t: &ThreadSummary, cfg: &CliConfig) -> Value {
    json!({
        "id": t.id,
        "kind": format!("{:?}", t.kind).to_lowercase(),
        "name": summary_name(t, cfg),
        "peer": t.peer,
        "member_count": t.member_count,
        "last_msg_id": t.last_msg_id,
        "unread": t.unread,
        "muted": t.muted,
        "hidden": t.hidden,
        "last_message": t.last_message.as_ref().map(|m| message_json(m, cfg)),
    })
}

pub fn thread_json(t: &Thread) -> Value {
    json!({
        "id": t.id,
        "kind": format!("{:?}", t.kind).to_lowercase(),
        "name": t.name,
        "last_msg_id": t.last_msg_id,
        "members": t.members.iter().map(|m| json!({
            "user": m.user, "role": format!("{:?}", m.role).to_lowercase(),
            "delivered": m.delivered, "read": m.read,
        })).collect::<Vec<_>>(),
    })
}

pub fn user_json(u: &UserInfo) -> Value {
    json!({ "id": u.id, "handle": u.handle })
}

pub fn presence_text(p: &Presence, name: &str) -> String {
    if p.online {
        format!("{name} is online")
    } else if p.last_seen == 0 {
        format!("{name} is offline (never seen)")
    } else {
        format!("{name} is offline, last seen {} UTC", datetime(p.last_seen))
    }
}

pub fn presence_json(p: &Presence, handle: &str) -> Value {
    json!({ "user": p.user, "handle": handle, "online": p.online, "last_seen": p.last_seen,
            "last_seen_time": (p.last_seen > 0).then(|| datetime(p.last_seen)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(datetime(0), "1970-01-01 00:00:00");
        assert_eq!(datetime(1_700_000_000_000_000), "2023-11-14 22:13:20");
        assert_eq!(datetime(951_782_400_000_000), "2000-02-29 00:00:00");
        assert_eq!(clock(1_700_000_000_000_000), "22:13");
    }

    #[test]
    fn meta_renders_the_edit_mark_the_reply_and_the_reactions() {
        let meta = MessageMeta {
            id: 2,
            reply_to: 1,
            edited_at: 3,
            reactions: vec![
                ReactionCount {
                    reaction: "👍".into(),
                    count: 2,
                },
                ReactionCount {
                    reaction: "😂".into(),
                    count: 1,
                },
            ],
            mine: "👍".into(),
        };
        let (mark, lines) = meta_lines(&meta, Some("alice: \"lunch?\""));
        assert_eq!(mark, " (edited)");
        assert_eq!(
            lines,
            [
                "    ↪ reply to alice: \"lunch?\"",
                "    👍 2  😂 1 (you: 👍)"
            ]
        );
        let bare = MessageMeta {
            reply_to: 9,
            ..MessageMeta::default()
        };
        assert_eq!(
            meta_lines(&bare, None),
            (String::new(), vec!["    ↪ reply to #9".to_string()])
        );
    }

    #[test]
    fn excerpts_keep_the_first_line_and_forty_characters() {
        assert_eq!(excerpt("short"), "short");
        assert_eq!(excerpt("two\nlines"), "two…");
        assert_eq!(excerpt(&"é".repeat(41)), format!("{}…", "é".repeat(40)));
    }
}
