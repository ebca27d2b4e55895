//! Rendering: times, message bodies, JSON shapes for `--json`.

use courier_client::protocol::wire::{Reader, Wire};
use courier_client::protocol::{
    Message, MessageKind, Presence, SystemEvent, SystemEventKind, Thread, ThreadKind,
    ThreadSummary, UserInfo,
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
    }
}

/// The users a message names: its sender and, for a system message, who did what to whom.
pub fn mentioned(m: &Message) -> Vec<u64> {
    let mut ids = vec![m.sender];
    if m.kind == MessageKind::System {
        if let Ok(ev) = SystemEvent::get(&mut Reader::new(m.body.clone()), "SystemEvent") {
            ids.push(ev.actor);
            if ev.event != SystemEventKind::Recalled {
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
}
