//! A timer wheel of one-second slots for connection deadlines.
//!
//! Each connection has exactly one entry, (slot, generation), in the wheel. Nothing is ever
//! removed or moved when a connection is active: when an entry's second comes, the shard looks
//! at the connection's *real* deadline (which frames keep pushing forward) and either times it
//! out or files the entry again at that deadline. An idle connection therefore costs one entry
//! of 8 bytes and is looked at once per deadline, not once per frame.
//!
//! Invariant: an entry is never filed later than its connection's real deadline, since
//! deadlines only move later. The one exception would be the move from handshake to
//! authenticated (idle limit shorter than the handshake limit), so the first entry is filed at
//! the earlier of the two.

/// Seconds the wheel spans; later deadlines are filed in the last slot and re-filed from there.
const SLOTS: u32 = 64;

pub struct Wheel {
    slots: Vec<Vec<(u32, u32)>>,
    /// The last second whose slot was taken.
    now: u32,
}

impl Wheel {
    pub fn new(now: u32) -> Wheel {
        Wheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            now,
        }
    }

    /// Files (slot, gen) to be looked at in second `at` (or the next second if `at` has passed;
    /// or the wheel's farthest second if `at` is beyond it).
    pub fn schedule(&mut self, slot: u32, gen: u32, at: u32) {
        let at = at.clamp(self.now + 1, self.now + SLOTS - 1);
        self.slots[(at % SLOTS) as usize].push((slot, gen));
    }

    /// Takes every entry due up to second `now` into `due` (in order of their seconds).
    pub fn advance(&mut self, now: u32, due: &mut Vec<(u32, u32)>) {
        while self.now < now {
            self.now += 1;
            due.append(&mut self.slots[(self.now % SLOTS) as usize]);
        }
    }

    /// Entries in the wheel (a connection's entry counts once).
    pub fn len(&self) -> usize {
        self.slots.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_due_at_their_second() {
        let mut w = Wheel::new(0);
        w.schedule(1, 1, 3);
        w.schedule(2, 1, 0);
        w.schedule(3, 1, 1000);
        let mut due = Vec::new();
        w.advance(1, &mut due);
        assert_eq!(due, vec![(2, 1)], "a past deadline is due next second");
        due.clear();
        w.advance(3, &mut due);
        assert_eq!(due, vec![(1, 1)]);
        due.clear();
        w.advance(63, &mut due);
        assert_eq!(
            due,
            vec![(3, 1)],
            "a far deadline comes back at the wheel's end to be re-filed"
        );
        assert!(w.is_empty());
    }
}
