//! Direct threads, groups and the thread list.

use courier_protocol::{
    AddMembers, CreateGroup, GetThread, LeaveGroup, ListThreads, OpenDirect, RemoveMember,
    RenameGroup, SetThreadState, Thread, ThreadList, ThreadSummary,
};

use crate::client::expect_reply;
use crate::{Client, Result};

/// Page size of [`Client::list_all_threads`].
const THREAD_PAGE: u16 = 200;

impl Client {
    /// The one direct thread between the caller and `peer`, created on first use.
    pub fn open_direct(&self, peer: u64) -> Result<Thread> {
        Ok(expect_reply!(self.call(OpenDirect { peer }), "OpenDirect", ThreadInfo)?.thread)
    }

    /// Creates a group with the caller as admin and these members.
    pub fn create_group(&self, name: &str, members: &[u64]) -> Result<Thread> {
        let request = CreateGroup {
            name: name.into(),
            members: members.to_vec(),
        };
        Ok(expect_reply!(self.call(request), "CreateGroup", ThreadInfo)?.thread)
    }

    /// Adds members to a group (admins only).
    pub fn add_members(&self, thread: u64, members: &[u64]) -> Result<()> {
        let request = AddMembers {
            thread,
            members: members.to_vec(),
        };
        expect_reply!(self.call(request), "AddMembers", Done).map(drop)
    }

    /// Removes a member from a group (admins only).
    pub fn remove_member(&self, thread: u64, user: u64) -> Result<()> {
        expect_reply!(
            self.call(RemoveMember { thread, user }),
            "RemoveMember",
            Done
        )
        .map(drop)
    }

    /// Leaves a group.
    pub fn leave_group(&self, thread: u64) -> Result<()> {
        expect_reply!(self.call(LeaveGroup { thread }), "LeaveGroup", Done).map(drop)
    }

    /// Renames a group.
    pub fn rename_group(&self, thread: u64, name: &str) -> Result<()> {
        expect_reply!(
            self.call(RenameGroup {
                thread,
                name: name.into()
            }),
            "RenameGroup",
            Done
        )
        .map(drop)
    }

    /// One page of the thread list, newest activity first, starting after the cursor
    /// (`before_msg_id`, `before_thread`; both 0 for the first page).
    pub fn list_threads(
        &self,
        before_msg_id: u64,
        before_thread: u64,
        limit: u16,
    ) -> Result<ThreadList> {
        expect_reply!(
            self.call(ListThreads {
                before_msg_id,
                before_thread,
                limit
            }),
            "ListThreads",
            ThreadList
        )
    }

    /// The whole thread list, all pages.
    pub fn list_all_threads(&self) -> Result<Vec<ThreadSummary>> {
        let mut out: Vec<ThreadSummary> = Vec::new();
        loop {
            let (before_msg_id, before_thread) =
                out.last().map_or((0, 0), |t| (t.last_msg_id, t.id));
            let page = self.list_threads(before_msg_id, before_thread, THREAD_PAGE)?;
            let done = !page.more || page.threads.is_empty();
            out.extend(page.threads);
            if done {
                return Ok(out);
            }
        }
    }

    /// A thread in full, with members and their receipt cursors.
    pub fn get_thread(&self, thread: u64) -> Result<Thread> {
        Ok(expect_reply!(self.call(GetThread { thread }), "GetThread", ThreadInfo)?.thread)
    }

    /// Sets the caller's private state of a thread: muted, hidden, label.
    pub fn set_thread_state(
        &self,
        thread: u64,
        muted: bool,
        hidden: bool,
        label: &str,
    ) -> Result<()> {
        let request = SetThreadState {
            thread,
            muted,
            hidden,
            label: label.into(),
        };
        expect_reply!(self.call(request), "SetThreadState", Done).map(drop)
    }
}
