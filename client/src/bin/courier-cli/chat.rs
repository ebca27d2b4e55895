//! The interactive chat: a line-oriented terminal UI.
//!
//! The main thread reads commands and messages from stdin; an event thread prints what the
//! server pushes. Both share [`Ui`] behind a mutex. Incoming messages are acknowledged with a
//! DELIVERED receipt, and with READ when they show up in the open thread.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use courier_client::protocol::{Direction, MessageMeta, SystemEventKind, ThreadKind};
use courier_client::{
    apply_receipt, apply_sent, tick, Client, ClientConfig, ErrorCode, Event, Message, MessageKind,
    ReceiptKind, Thread, Tick,
};
use parking_lot::Mutex;

use crate::config::CliConfig;
use crate::error::CliError;
use crate::oneshot::{lookup, DEVICE};
use crate::output::{
    body_text, clock, excerpt, mentioned, meta_lines, presence_text, reactions_text, summary_name,
    system_event, thread_name,
};
use crate::{prompt, server_addr, Cli, CliResult};

const BLUE: &str = "\x1b[34m";
const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

/// How long a typed message may wait for a reconnect before it is reported as not sent.
const SEND_PATIENCE: Duration = Duration::from_secs(30);
/// Messages of the open thread remembered for quoting replies and naming what was reacted to.
const REMEMBERED: usize = 500;

const HELP: &str = "\
commands:
  /threads              list threads with unread counts
  /open HANDLE          open the direct thread with a user
  /open #THREAD         open a thread by id
  /group NAME a,b,...   create a group and open it
  /add HANDLE           add a member to the open group
  /recall               recall your last message in the open thread
  /reply [#ID] TEXT     reply to the last message from someone else (or to message ID)
  /edit [#ID] TEXT      replace the text of your last message (or of message ID)
  /react [#ID] [EMOJI]  react to the last message from someone else (or to message ID);
                        without EMOJI, remove your reaction
  /help                 this help
  /quit                 leave
anything else is sent to the open thread";

/// The thread on screen.
struct Open {
    thread: Thread,
    /// Your own messages shown in this thread: id → (text, tick last printed).
    own: BTreeMap<u64, (String, Tick)>,
    /// For a direct thread, the other member.
    peer: Option<u64>,
    /// The latest messages shown here, oldest first (at most [`REMEMBERED`]): id, sender,
    /// text; for quoting what a reply answers.
    seen: VecDeque<(u64, u64, String)>,
    /// The newest message from someone else: what `/reply` and `/react` answer by default.
    last_incoming: Option<u64>,
}

impl Open {
    fn remember(&mut self, m: &Message, text: &str, me: u64) {
        if m.kind == MessageKind::System {
            return;
        }
        if self.seen.len() == REMEMBERED {
            self.seen.pop_front();
        }
        self.seen.push_back((m.id, m.sender, text.to_string()));
        if m.sender != me {
            self.last_incoming = Some(m.id);
        }
    }

    /// `who: "first words…"` of a remembered message.
    fn quote(&self, id: u64, cfg: &CliConfig) -> Option<String> {
        let (_, sender, text) = self.seen.iter().find(|(seen, _, _)| *seen == id)?;
        Some(format!("{}: \"{}\"", cfg.name(*sender), excerpt(text)))
    }
}

/// `#ID rest` → (Some(ID), rest); anything else → (None, all of it).
fn target(rest: &str) -> CliResult<(Option<u64>, &str)> {
    match rest.strip_prefix('#') {
        None => Ok((None, rest)),
        Some(tail) => {
            let (id, rest) = tail.split_once(' ').unwrap_or((tail, ""));
            let id = id
                .parse()
                .map_err(|_| CliError::Usage(format!("not a message id: #{id}")))?;
            Ok((Some(id), rest.trim()))
        }
    }
}

struct Ui {
    me: u64,
    cfg: CliConfig,
    open: Option<Open>,
}

/// Runs the interactive chat until `/quit` or end of input.
pub fn run(cli: &Cli) -> CliResult {
    let mut cfg = CliConfig::load()?;
    let server = server_addr(cli, &cfg);
    let config = ClientConfig::reconnecting()
        .with_device(DEVICE)
        .with_encryption(crate::encryption(cli, &server)?);
    let client = Client::connect(&server, config)?;
    crate::learned_key(cli, &server, &client)?;
    if cfg.token_for(&server).is_some() {
        // Messages missed since the last run come out of the event stream.
        cfg.restore_watermark(&client);
    }
    let auth = authenticate(&client, &server, &mut cfg)?;
    cfg.remember_auth(&client.server_addr(), &auth);
    cfg.remember_watermark(&client);
    cfg.save()?;
    println!(
        "{BOLD}logged in as {} on {}{RESET} — /help for commands",
        auth.handle,
        client.server_addr()
    );

    let client = Arc::new(client);
    let ui = Arc::new(Mutex::new(Ui {
        me: auth.user,
        cfg,
        open: None,
    }));
    list_threads(&client, &ui);
    {
        let (client, ui) = (Arc::clone(&client), Arc::clone(&ui));
        std::thread::spawn(move || event_loop(&client, &ui));
    }

    while let Some(line) = prompt::line("")? {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "/quit" || line == "/exit" {
            break;
        }
        if let Err(e) = command(&client, &ui, line) {
            println!("{DIM}! {e}{RESET}");
        }
    }
    // Everything shown this run counts as seen: the next run's backlog starts here. Unread
    // messages that arrived unseen still show in the thread list's unread counts.
    let _ = client.sync();
    let mut ui = ui.lock();
    ui.cfg.remember_watermark(&client);
    ui.cfg.save()?;
    // The client is not closed here: the event thread would report the end of the session as
    // a failure. The process exits and the token stays valid for the next run.
    Ok(())
}

/// Resumes the saved session, or asks whether to log in or register.
fn authenticate(
    client: &Client,
    server: &str,
    cfg: &mut CliConfig,
) -> CliResult<courier_client::AuthOk> {
    if let Some(token) = cfg.token_for(server) {
        match client.resume(&token) {
            Ok(auth) => return Ok(auth),
            Err(e) if e.code() == Some(ErrorCode::InvalidToken) => {
                println!("your saved session has expired; please log in again");
                cfg.forget_auth();
            }
            Err(e) => return Err(e.into()),
        }
    }
    loop {
        let answer = ask("no saved session on this server. (l)ogin or (r)egister? ")?;
        let register = match answer.trim() {
            "l" | "login" => false,
            "r" | "register" => true,
            _ => continue,
        };
        let handle = ask("handle: ")?.trim().to_string();
        let password = prompt::password("password: ")?
            .ok_or_else(|| CliError::Usage("no password given".into()))?;
        let result = if register {
            client.register(&handle, &password)
        } else {
            client.login(&handle, &password)
        };
        match result {
            Ok(auth) => return Ok(auth),
            Err(e) if e.code().is_some_and(|c| !c.closes_connection()) => {
                println!("{}", CliError::for_account(e, &handle));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn ask(question: &str) -> CliResult<String> {
    prompt::line(question)?.ok_or_else(|| CliError::Usage("input ended".into()))
}

fn command(client: &Client, ui: &Mutex<Ui>, line: &str) -> CliResult {
    let (cmd, rest) = line
        .split_once(' ')
        .map_or((line, ""), |(c, r)| (c, r.trim()));
    match cmd {
        "/help" => println!("{HELP}"),
        "/threads" => list_threads(client, ui),
        "/open" if rest.starts_with('#') => {
            let id = rest[1..]
                .parse()
                .map_err(|_| CliError::Usage(format!("not a thread id: {rest}")))?;
            let thread = client.get_thread(id)?;
            open(client, ui, thread)?;
        }
        "/open" if !rest.is_empty() => {
            let user = lookup(client, &mut ui.lock().cfg, rest)?;
            let thread = client.open_direct(user.id)?;
            open(client, ui, thread)?;
        }
        "/group" => {
            let (name, members) = rest
                .split_once(' ')
                .ok_or_else(|| CliError::Usage("usage: /group NAME a,b".into()))?;
            let mut ids = Vec::new();
            for handle in members.split(',').map(str::trim).filter(|h| !h.is_empty()) {
                ids.push(lookup(client, &mut ui.lock().cfg, handle)?.id);
            }
            let thread = client.create_group(name, &ids)?;
            println!("{DIM}created group \"{name}\" (#{}){RESET}", thread.id);
            open(client, ui, thread)?;
        }
        "/add" if !rest.is_empty() => {
            let thread = open_thread(ui)?;
            let user = lookup(client, &mut ui.lock().cfg, rest)?;
            client.add_members(thread, &[user.id])?;
            println!("{DIM}added {rest}{RESET}");
        }
        "/recall" => {
            let thread = open_thread(ui)?;
            let last = ui
                .lock()
                .open
                .as_ref()
                .and_then(|o| o.own.keys().next_back().copied());
            let message =
                last.ok_or_else(|| CliError::Usage("you have sent nothing here".into()))?;
            client.recall(thread, message)?;
            if let Some(o) = ui.lock().open.as_mut() {
                o.own.remove(&message);
            }
            println!("{DIM}recalled your last message{RESET}");
        }
        "/reply" => {
            let thread = open_thread(ui)?;
            let (id, text) = target(rest)?;
            let to = id
                .or_else(|| ui.lock().open.as_ref().and_then(|o| o.last_incoming))
                .ok_or_else(|| {
                    CliError::Usage("nothing to reply to yet: /reply #ID TEXT".into())
                })?;
            if text.is_empty() {
                return Err(CliError::Usage("usage: /reply [#ID] TEXT".into()));
            }
            let sent = client.send_reply(thread, to, text)?;
            let mut ui = ui.lock();
            let me = ui.me;
            let quoted = ui.open.as_ref().and_then(|o| o.quote(to, &ui.cfg));
            if let Some(o) = ui.open.as_mut().filter(|o| o.thread.id == thread) {
                let t = tick(&o.thread.members, me, sent.message);
                o.own.insert(sent.message, (text.to_string(), t));
                print_own(sent.message, text, t);
                let reply = MessageMeta {
                    reply_to: to,
                    ..MessageMeta::default()
                };
                for line in meta_lines(&reply, quoted.as_deref()).1 {
                    println!("{DIM}{line}{RESET}");
                }
            }
        }
        "/edit" => {
            let thread = open_thread(ui)?;
            let (id, text) = target(rest)?;
            let last_own = ui
                .lock()
                .open
                .as_ref()
                .and_then(|o| o.own.keys().next_back().copied());
            let message = id
                .or(last_own)
                .ok_or_else(|| CliError::Usage("you have sent nothing here".into()))?;
            if text.is_empty() {
                return Err(CliError::Usage("usage: /edit [#ID] TEXT".into()));
            }
            client.edit(thread, message, text.as_bytes().to_vec())?;
            if let Some((own, _)) = ui
                .lock()
                .open
                .as_mut()
                .and_then(|o| o.own.get_mut(&message))
            {
                *own = text.to_string();
            }
        }
        "/react" => {
            let thread = open_thread(ui)?;
            let (id, reaction) = target(rest)?;
            let message = id
                .or_else(|| ui.lock().open.as_ref().and_then(|o| o.last_incoming))
                .ok_or_else(|| CliError::Usage("nothing to react to yet: /react #ID 👍".into()))?;
            client.react(thread, message, reaction)?;
        }
        c if c.starts_with('/') => {
            return Err(CliError::Usage(format!(
                "unknown command {c}; /help lists them"
            )))
        }
        _ => {
            let thread = open_thread(ui)?;
            let sent = client.send_with_retry(
                thread,
                MessageKind::Text,
                line.as_bytes().to_vec(),
                SEND_PATIENCE,
            )?;
            let mut ui = ui.lock();
            let me = ui.me;
            if let Some(o) = ui.open.as_mut().filter(|o| o.thread.id == thread) {
                let t = tick(&o.thread.members, me, sent.message);
                o.own.insert(sent.message, (line.to_string(), t));
                println!(
                    "[{}] {BOLD}you{RESET}: {line} {}",
                    clock(sent.message),
                    tick_text(t)
                );
            }
        }
    }
    Ok(())
}

fn open_thread(ui: &Mutex<Ui>) -> CliResult<u64> {
    ui.lock()
        .open
        .as_ref()
        .map(|o| o.thread.id)
        .ok_or_else(|| CliError::Usage("open a thread first: /open HANDLE".into()))
}

fn list_threads(client: &Client, ui: &Mutex<Ui>) {
    match client.list_all_threads() {
        Ok(threads) if threads.is_empty() => {
            println!("{DIM}no threads yet: /open HANDLE to start one{RESET}")
        }
        Ok(threads) => {
            learn_users(client, ui, threads.iter().map(|t| t.peer));
            let ui = ui.lock();
            for t in threads {
                let unread = if t.unread > 0 {
                    format!(" {BOLD}({} unread){RESET}", t.unread)
                } else {
                    String::new()
                };
                println!("  #{:<6} {}{unread}", t.id, summary_name(&t, &ui.cfg));
            }
        }
        Err(e) => println!("{DIM}! cannot list threads: {e}{RESET}"),
    }
}

/// Shows the thread: presence of the peer, the latest messages with ticks; marks them read.
fn open(client: &Client, ui: &Mutex<Ui>, thread: Thread) -> CliResult {
    let me = ui.lock().me;
    let peer = (thread.kind == ThreadKind::Direct)
        .then(|| thread.members.iter().find(|m| m.user != me).map(|m| m.user))
        .flatten();
    let mut page = client.history(thread.id, 0, Direction::Backward, 20)?;
    page.messages.reverse();
    let members = thread.members.iter().map(|m| m.user);
    learn_users(
        client,
        ui,
        members.chain(page.messages.iter().flat_map(mentioned)),
    );
    let mut opened = Open {
        thread,
        own: BTreeMap::new(),
        peer,
        seen: VecDeque::new(),
        last_incoming: None,
    };
    {
        let ui = ui.lock();
        println!(
            "{BOLD}── {} (#{}) ──{RESET}",
            thread_name(&opened.thread, me, &ui.cfg),
            opened.thread.id
        );
        for m in &page.messages {
            let text = body_text(m, &ui.cfg);
            let meta = page.meta.iter().find(|x| x.id == m.id);
            let quoted = meta.and_then(|x| opened.quote(x.reply_to, &ui.cfg));
            let (mark, extra) =
                meta.map_or_else(Default::default, |x| meta_lines(x, quoted.as_deref()));
            if m.sender == me && m.kind != MessageKind::System {
                let t = tick(&opened.thread.members, me, m.id);
                if !m.recalled {
                    opened.own.insert(m.id, (text.clone(), t));
                }
                print_own(m.id, &format!("{text}{mark}"), t);
            } else {
                print_incoming(m, &ui.cfg, &mark);
            }
            for line in extra {
                println!("{DIM}{line}{RESET}");
            }
            opened.remember(m, &text, me);
        }
    }
    if let Some(last) = page.messages.last() {
        let _ = client.receipt(opened.thread.id, ReceiptKind::Read, last.id);
    }
    if let Some(peer) = peer {
        show_presence(client, ui, peer);
    }
    ui.lock().open = Some(opened);
    Ok(())
}

/// Subscribes to the peer's presence and prints it; adds them as a contact first if needed,
/// since presence is only shared between contacts.
fn show_presence(client: &Client, ui: &Mutex<Ui>, peer: u64) {
    let subscribed = client.presence_subscribe(&[peer]);
    if subscribed.err().and_then(|e| e.code()) == Some(ErrorCode::NotContact)
        && client.contact_add(peer).is_ok()
    {
        let _ = client.presence_subscribe(&[peer]);
    }
    if let Ok(entries) = client.presence_query(&[peer]) {
        let ui = ui.lock();
        for p in entries.iter().filter(|p| p.user == peer) {
            println!("{DIM}{}{RESET}", presence_text(p, &ui.cfg.name(peer)));
        }
    }
}

fn tick_text(t: Tick) -> String {
    match t {
        Tick::Read => format!("{BLUE}{}{RESET}", t.symbol()),
        _ => t.symbol().to_string(),
    }
}

/// One of the user's own messages, with its tick.
fn print_own(id: u64, text: &str, t: Tick) {
    println!("[{}] {BOLD}you{RESET}: {text} {}", clock(id), tick_text(t));
}

/// Someone else's message (or a system notice), with `mark` (e.g. ` (edited)`) after it.
fn print_incoming(m: &Message, cfg: &CliConfig, mark: &str) {
    let text = body_text(m, cfg);
    if m.kind == MessageKind::System {
        println!("{DIM}[{}] {text}{RESET}", clock(m.id));
    } else {
        println!(
            "[{}] {BOLD}{}{RESET}: {text}{DIM}{mark}{RESET}",
            clock(m.id),
            cfg.name(m.sender)
        );
    }
}

/// What a system notice about another message adds in the open thread: which message an
/// EDITED or REACTED notice is about, and the message's reactions now.
fn print_change(o: &mut Open, m: &Message, cfg: &CliConfig) {
    let Some(ev) = system_event(m) else {
        return;
    };
    match ev.event {
        SystemEventKind::Edited => {
            let text = String::from_utf8_lossy(&ev.body).into_owned();
            if let Some(seen) = o.seen.iter_mut().find(|(id, _, _)| *id == ev.subject) {
                seen.2 = text.clone();
            }
            if let Some((own, _)) = o.own.get_mut(&ev.subject) {
                *own = text;
            }
        }
        SystemEventKind::Reacted => {
            let about = o
                .quote(ev.subject, cfg)
                .unwrap_or_else(|| format!("#{}", ev.subject));
            let now = match reactions_text(&ev.reactions) {
                r if r.is_empty() => "no reactions".to_string(),
                r => r,
            };
            println!("{DIM}    on {about}: {now}{RESET}");
        }
        _ => {}
    }
}

fn event_loop(client: &Client, ui: &Mutex<Ui>) {
    for event in client.events() {
        match event {
            Event::Message(m) => on_message(client, ui, &m),
            Event::MessageMeta { thread, meta } => {
                let ui = ui.lock();
                if let Some(o) = ui.open.as_ref().filter(|o| o.thread.id == thread) {
                    let quoted = o.quote(meta.reply_to, &ui.cfg);
                    let (mark, extra) = meta_lines(&meta, quoted.as_deref());
                    if !mark.is_empty() {
                        println!("{DIM}    {}{RESET}", mark.trim());
                    }
                    for line in extra {
                        println!("{DIM}{line}{RESET}");
                    }
                }
            }
            Event::Receipt {
                thread,
                user,
                kind,
                up_to,
            } => on_receipt(ui, thread, user, kind, up_to),
            Event::Presence(p) => {
                let ui = ui.lock();
                if ui.open.as_ref().and_then(|o| o.peer) == Some(p.user) {
                    println!("{DIM}{}{RESET}", presence_text(&p, &ui.cfg.name(p.user)));
                }
            }
            Event::Typing {
                thread,
                user,
                active: true,
            } => {
                let ui = ui.lock();
                if ui.open.as_ref().is_some_and(|o| o.thread.id == thread) && user != ui.me {
                    println!("{DIM}… {} is typing{RESET}", ui.cfg.name(user));
                }
            }
            Event::ThreadUpdated(thread) => {
                let mut ui = ui.lock();
                let me = ui.me;
                // A thread without me among its members is one I left or was removed from:
                // its (empty) member list says nothing about ticks.
                let member = thread.members.iter().any(|m| m.user == me);
                if let Some(o) = ui
                    .open
                    .as_mut()
                    .filter(|o| member && o.thread.id == thread.id)
                {
                    o.thread.members = thread.members;
                    print_tick_changes(o, me);
                }
            }
            Event::Disconnected { .. } => println!("{DIM}! connection lost, reconnecting…{RESET}"),
            Event::Reconnected { addr } => {
                println!("{DIM}reconnected to {addr}{RESET}");
                let peer = ui.lock().open.as_ref().and_then(|o| o.peer);
                if let Some(peer) = peer {
                    let _ = client.presence_subscribe(&[peer]);
                }
            }
            Event::Redirected { addr, .. } => println!("{DIM}moving to {addr}{RESET}"),
            Event::SessionEnded { reason } => {
                let why = reason.map_or("connection closed".to_string(), |c| c.to_string());
                println!("{DIM}! session ended: {why}{RESET}");
                let mut ui = ui.lock();
                ui.cfg.remember_watermark(client);
                if reason == Some(ErrorCode::SessionRevoked) {
                    ui.cfg.forget_auth();
                }
                let _ = ui.cfg.save();
                std::process::exit(1);
            }
            Event::Typing { .. } => {}
        }
    }
}

/// Learns the handles of the users among `ids` not known yet, without holding the UI lock
/// during the request; best effort.
fn learn_users(client: &Client, ui: &Mutex<Ui>, ids: impl IntoIterator<Item = u64>) {
    let unknown = ui.lock().cfg.unknown(ids);
    if unknown.is_empty() {
        return;
    }
    if let Ok(users) = client.users(&unknown) {
        let mut ui = ui.lock();
        for u in &users {
            ui.cfg.learn(u.id, &u.handle);
        }
        let _ = ui.cfg.save();
    }
}

fn on_message(client: &Client, ui: &Mutex<Ui>, m: &Message) {
    learn_users(client, ui, mentioned(m));
    let (me, in_open) = {
        let ui = ui.lock();
        (
            ui.me,
            ui.open.as_ref().is_some_and(|o| o.thread.id == m.thread),
        )
    };
    if m.sender != me {
        let _ = client.receipt(m.thread, ReceiptKind::Delivered, m.id);
    }
    let mut guard = ui.lock();
    if in_open {
        let text = body_text(m, &guard.cfg);
        let ui = &mut *guard;
        let incoming = m.sender != me || m.kind == MessageKind::System;
        if !incoming {
            // Sent from another device of ours.
            if let Some(o) = ui.open.as_mut() {
                let t = tick(&o.thread.members, me, m.id);
                o.own.insert(m.id, (text.clone(), t));
                print_own(m.id, &text, t);
            }
        } else {
            print_incoming(m, &ui.cfg, "");
        }
        if let Some(o) = ui.open.as_mut() {
            print_change(o, m, &ui.cfg);
            o.remember(m, &text, me);
            // The sender has read everything before their own message.
            if incoming && apply_sent(&mut o.thread.members, m) {
                print_tick_changes(o, me);
            }
        }
        drop(guard);
        if incoming {
            let _ = client.receipt(m.thread, ReceiptKind::Read, m.id);
        }
    } else if m.sender != me {
        let text = body_text(m, &guard.cfg);
        println!(
            "{DIM}[#{} {}]{RESET} {BOLD}{}{RESET}: {text}",
            m.thread,
            clock(m.id),
            guard.cfg.name(m.sender)
        );
    }
}

fn on_receipt(ui: &Mutex<Ui>, thread: u64, user: u64, kind: ReceiptKind, up_to: u64) {
    let mut ui = ui.lock();
    let me = ui.me;
    if user == me {
        return;
    }
    if let Some(o) = ui.open.as_mut().filter(|o| o.thread.id == thread) {
        if apply_receipt(&mut o.thread.members, user, kind, up_to) {
            print_tick_changes(o, me);
        }
    }
}

/// One status line per own message whose tick moved.
fn print_tick_changes(o: &mut Open, me: u64) {
    for (id, (text, shown)) in o.own.iter_mut() {
        let now = tick(&o.thread.members, me, *id);
        if now > *shown {
            *shown = now;
            let what = if now == Tick::Read {
                "read"
            } else {
                "delivered"
            };
            println!("{DIM}  {}{DIM} {what}: {text}{RESET}", tick_text(now));
        }
    }
}
