//! Direct threads, groups and the thread list.

use courier_protocol::{
    AddMembers, CreateGroup, GetThread, LeaveGroup, ListThreads, OpenDirect, RemoveMember,
    RenameGroup, SetThreadState, Thread, ThreadList, ThreadSummary,
};

use crate::{Client, Result};

/// Page size of [`Client::list_all_threads`].
const THREAD_PAGE: u16 = 200;

/// The cursor (`before_msg_id`, `before_thread`) of the page after the threads listed so far.
fn next_page_cursor(so_far: &[ThreadSummary]) -> (u64, u64) {
    so_far.last().map_or((0, 0), |t| (t.last_msg_id, t.id))
}

/// Adds a page to the list; true when it was the last.
fn add_page(so_far: &mut Vec<ThreadSummary>, page: ThreadList) -> bool {
    let done = !page.more || page.threads.is_empty();
    so_far.extend(page.threads);
    done
}

requests! {
    /// The one direct thread between the caller and `peer`, created on first use.
    pub fn open_direct(peer: u64) -> Thread {
        OpenDirect { peer } => ThreadInfo(reply) => reply.thread
    }

    /// Creates a group with the caller as admin and these members.
    pub fn create_group(name: &str, members: &[u64]) -> Thread {
        CreateGroup { name: name.into(), members: members.to_vec() } => ThreadInfo(reply) => reply.thread
    }

    /// Adds members to a group (admins only).
    pub fn add_members(thread: u64, members: &[u64]) -> () {
        AddMembers { thread, members: members.to_vec() } => Done(_) => ()
    }

    /// Removes a member from a group (admins only).
    pub fn remove_member(thread: u64, user: u64) -> () {
        RemoveMember { thread, user } => Done(_) => ()
    }

    /// Leaves a group.
    pub fn leave_group(thread: u64) -> () {
        LeaveGroup { thread } => Done(_) => ()
    }

    /// Renames a group.
    pub fn rename_group(thread: u64, name: &str) -> () {
        RenameGroup { thread, name: name.into() } => Done(_) => ()
    }

    /// One page of the thread list, newest activity first, starting after the cursor
    /// (`before_msg_id`, `before_thread`; both 0 for the first page).
    pub fn list_threads(before_msg_id: u64, before_thread: u64, limit: u16) -> ThreadList {
        ListThreads { before_msg_id, before_thread, limit } => ThreadList(reply) => reply
    }

    /// A thread in full, with members and their receipt cursors.
    pub fn get_thread(thread: u64) -> Thread {
        GetThread { thread } => ThreadInfo(reply) => reply.thread
    }

    /// Sets the caller's private state of a thread: muted, hidden, label.
    pub fn set_thread_state(thread: u64, muted: bool, hidden: bool, label: &str) -> () {
        SetThreadState { thread, muted, hidden, label: label.into() } => Done(_) => ()
    }
}

impl Client {
    /// The whole thread list, all pages.
    pub fn list_all_threads(&self) -> Result<Vec<ThreadSummary>> {
        let mut out = Vec::new();
        loop {
            let (before_msg_id, before_thread) = next_page_cursor(&out);
            let page = self.list_threads(before_msg_id, before_thread, THREAD_PAGE)?;
            if add_page(&mut out, page) {
                return Ok(out);
            }
        }
    }
}

#[cfg(feature = "tokio")]
impl crate::AsyncClient {
    /// The whole thread list, all pages.
    pub async fn list_all_threads(&self) -> Result<Vec<ThreadSummary>> {
        let mut out = Vec::new();
        loop {
            let (before_msg_id, before_thread) = next_page_cursor(&out);
            let page = self
                .list_threads(before_msg_id, before_thread, THREAD_PAGE)
                .await?;
            if add_page(&mut out, page) {
                return Ok(out);
            }
        }
    }
}
