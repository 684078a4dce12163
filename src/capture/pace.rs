//! The tailer's pace: when to drain, when to wait for wake-ups, how soon to poll.
//!
//! A wake-up costs the writer a place in the queue for the NOTIFY commit lock; while
//! changes arrive, the tailer looks at that queue every few milliseconds (every few tens
//! of milliseconds while it finds no writer there), and once writers are seen waiting in
//! it most of the time it releases the doorbell (see `doorbell`): writers skip NOTIFY,
//! and the tailer reads batch after batch, each one coalescing everything committed
//! meanwhile. Below that point wake-ups cost writers next to nothing and deliver sooner
//! than any poll, so a busy but uncontended journal keeps them; and when the queue stays
//! while draining, other NOTIFYs in the writers' transactions hold the lock, so draining
//! would only delay delivery, and the tailer gives it up for a while. When the rate
//! falls to half of what it was when draining began, or the journal goes quiet, it
//! requests the doorbell again and reads once more; writers that did not ring may still
//! be committing, so it polls a few times at growing intervals, and reads once more when
//! the doorbell is granted (they have all ended then).

use std::time::{Duration, Instant};

/// Reads even without a notification this often: a safety net, not the mechanism.
const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// The change rate is measured over windows this long.
const RATE_WINDOW: Duration = Duration::from_millis(100);
/// Below this rate (changes/s) writers rarely meet at the NOTIFY lock: no sampling.
const SAMPLE_ABOVE_RATE: f64 = 100.0;
/// While busy, the queue on the NOTIFY lock is sampled at most this often ...
const SAMPLE_EVERY: Duration = Duration::from_millis(5);
/// ... and, while samples find no queue, ever less often, down to once per this: a
/// sample is a round trip that costs PostgreSQL about as much CPU as a tail read, and at
/// 1,000 changes/s sampling every 5 ms would add several per cent to its CPU per change.
/// A queue seen brings the sampling back to [`SAMPLE_EVERY`], so draining still starts
/// within about this long plus [`SAMPLES`] × [`SAMPLE_EVERY`] of writers queueing.
const SAMPLE_EVERY_CALM: Duration = Duration::from_millis(40);
/// ... and draining starts when at least this many of the last [`SAMPLES`] samples saw a
/// writer waiting: the lock is then busy most of the time, so commits wait for each
/// other's WAL flush instead of sharing one.
const QUEUED_SAMPLES_TO_DRAIN: u32 = 4;
const SAMPLES: u32 = 8;
/// While draining, a read that found fewer changes than this is followed by a pause of
/// [`DRAIN_PAUSE`] rather than the next read at once: under load every read then
/// coalesces a millisecond's commits, instead of the reads competing with the writers for
/// the database's CPU a few rows at a time.
const DRAIN_READ_AGAIN_FROM: usize = 100;
/// While draining, the pause after a read that found few changes or none ...
const DRAIN_PAUSE: Duration = Duration::from_millis(1);
/// ... and how many such reads in a row end the draining.
const QUIET_READS_TO_STOP_DRAINING: u32 = 20;
/// Draining also ends when the rate falls below this share of the rate when it began:
/// the load that caused the queue is gone (and if it comes back, so does the queue).
const STOP_DRAINING_BELOW_SHARE: f64 = 0.5;
/// Draining must empty the queue: sampled again once the doorbell has been released this
/// long (for writers that rang just before it to commit), a queue still there means
/// other NOTIFYs in the writers' transactions hold the lock. Skipping ours then only
/// delays delivery, so the tailer waits for wake-ups and does not try again for
/// [`HOLD_OFF_AFTER_NO_EFFECT`].
const SETTLE_BEFORE_SAMPLING_DRAIN: Duration = Duration::from_millis(50);
pub(super) const HOLD_OFF_AFTER_NO_EFFECT: Duration = Duration::from_secs(30);
/// Draining ends after this long anyway, to look at the lock again: a queue caused by a
/// moment's stall (a checkpoint's flushes) must not keep a steady, uncontended load on
/// polls for good. If writers still queue, draining starts again within [`SAMPLES`]
/// samples.
const DRAIN_AT_MOST: Duration = Duration::from_secs(5);
/// After draining, polls for writers that skipped ringing just before the doorbell was
/// requested start this soon and double up to [`POLL_INTERVAL`].
const FIRST_POLL_AFTER_DRAINING: Duration = Duration::from_millis(1);

/// What the tailer does after a batch.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Busy: look whether writers queue on the NOTIFY lock, and tell
    /// [`Pace::after_sample`].
    Sample,
    /// Writers queue on the NOTIFY lock: release the doorbell, read again.
    StartDraining,
    /// Draining and the last read found many changes: read again at once.
    ReadAgain,
    /// Draining and the last read found few changes or none: read again after this pause.
    Pause(Duration),
    /// Draining, and quiet or much calmer, or draining did not empty the queue
    /// (`had_effect` false): request the doorbell, then read once more.
    StopDraining { had_effect: bool },
    /// Wait for a wake-up, or poll after this long.
    Wait(Duration),
}

/// The tailer's pace: when to drain, when to wait, how soon to poll. Pure (time is
/// passed in), so the rules are tested without a database or a clock.
pub(super) struct Pace {
    pub(super) draining: bool,
    /// When the doorbell was released.
    drain_started: Instant,
    /// This drain has been seen to empty the queue: no more samples until it ends.
    drain_confirmed: bool,
    /// The rate when draining began.
    drain_rate: f64,
    /// No draining before this (the last one did not empty the queue).
    hold_off_until: Option<Instant>,
    quiet_reads: u32,
    /// Changes counted since `window_start` ...
    window_start: Instant,
    window_rows: usize,
    /// ... and the rate (changes/s) over the last complete window.
    rate: f64,
    /// The last samples of the NOTIFY lock's queue, newest in the lowest bit: set when a
    /// writer was waiting; `samples` of them count (since the mode last changed).
    queued: u32,
    samples: u32,
    last_sample: Instant,
    /// How long after the last sample the next one is due while not draining: doubles
    /// with every sample that finds no queue, up to [`SAMPLE_EVERY_CALM`].
    sample_every: Duration,
    /// What to do after the pending sample, unless the sample changes the mode.
    after_sample: Step,
    next_poll: Duration,
}

impl Pace {
    pub(super) fn new(now: Instant) -> Self {
        Pace {
            draining: false,
            drain_started: now,
            drain_confirmed: false,
            drain_rate: 0.0,
            hold_off_until: None,
            quiet_reads: 0,
            window_start: now,
            window_rows: 0,
            rate: 0.0,
            queued: 0,
            samples: 0,
            last_sample: now,
            sample_every: SAMPLE_EVERY,
            after_sample: Step::Wait(POLL_INTERVAL),
            // A connection lost while draining left writers skipping NOTIFY until the
            // doorbell was requested again: poll soon at first, as after draining.
            next_poll: FIRST_POLL_AFTER_DRAINING,
        }
    }

    pub(super) fn after_batch(&mut self, rows: usize, now: Instant) -> Step {
        self.window_rows += rows;
        let elapsed = now.saturating_duration_since(self.window_start);
        let window_done = elapsed >= RATE_WINDOW;
        if window_done {
            self.rate = self.window_rows as f64 / elapsed.as_secs_f64();
            self.window_start = now;
            self.window_rows = 0;
        }
        if !self.busy() {
            // Samples from an earlier burst say nothing about the next one.
            self.samples = 0;
            self.sample_every = SAMPLE_EVERY;
        }
        let step = if self.draining {
            let calmer = window_done && self.rate < self.drain_rate * STOP_DRAINING_BELOW_SHARE;
            if calmer || now.saturating_duration_since(self.drain_started) >= DRAIN_AT_MOST {
                return self.stop_draining(now, true);
            }
            if rows >= DRAIN_READ_AGAIN_FROM {
                self.quiet_reads = 0;
                Step::ReadAgain
            } else if rows > 0 {
                self.quiet_reads = 0;
                Step::Pause(DRAIN_PAUSE)
            } else {
                self.quiet_reads += 1;
                if self.quiet_reads >= QUIET_READS_TO_STOP_DRAINING {
                    return self.stop_draining(now, true);
                }
                Step::Pause(DRAIN_PAUSE)
            }
        } else if rows > 0 {
            // Writers who committed meanwhile rang (their wake-up is stored): no poll
            // needed, but after draining keep the short polls going.
            Step::Wait(self.next_poll)
        } else {
            let poll = self.next_poll;
            self.next_poll = (self.next_poll * 2).min(POLL_INTERVAL);
            Step::Wait(poll)
        };
        if !self.sample_due(now) {
            return step;
        }
        self.after_sample = step;
        Step::Sample
    }

    /// `queued`: whether a writer was waiting for the NOTIFY lock.
    pub(super) fn after_sample(&mut self, queued: bool, now: Instant) -> Step {
        self.last_sample = now;
        self.queued = (self.queued << 1) | u32::from(queued);
        self.samples = (self.samples + 1).min(SAMPLES);
        self.sample_every = if queued {
            SAMPLE_EVERY
        } else {
            (self.sample_every * 2).min(SAMPLE_EVERY_CALM)
        };
        let recent = self.queued & ((1 << SAMPLES) - 1);
        let after = std::mem::replace(&mut self.after_sample, Step::Wait(POLL_INTERVAL));
        if self.samples < SAMPLES {
            return after;
        }
        if recent.count_ones() < QUEUED_SAMPLES_TO_DRAIN {
            // Draining emptied the queue: sampling it again only costs (pg_locks takes
            // every lock-table partition's lock, which the writers need too).
            self.drain_confirmed = self.draining;
            return after;
        }
        if self.draining {
            // We do not ring, yet writers still queue: others' NOTIFYs hold the lock.
            self.hold_off_until = Some(now + HOLD_OFF_AFTER_NO_EFFECT);
            return self.stop_draining(now, false);
        }
        self.draining = true;
        self.drain_started = now;
        self.drain_confirmed = false;
        self.samples = 0;
        self.sample_every = SAMPLE_EVERY;
        self.quiet_reads = 0;
        self.drain_rate = self.rate.max(self.partial_rate(now)).max(SAMPLE_ABOVE_RATE);
        Step::StartDraining
    }

    /// The doorbell is released: writers stop ringing from `now` on.
    pub(super) fn marked_draining(&mut self, now: Instant) {
        self.drain_started = now;
        self.drain_confirmed = false;
        self.samples = 0;
    }

    fn stop_draining(&mut self, now: Instant, had_effect: bool) -> Step {
        self.draining = false;
        self.samples = 0;
        self.sample_every = SAMPLE_EVERY;
        self.next_poll = FIRST_POLL_AFTER_DRAINING;
        self.last_sample = now;
        Step::StopDraining { had_effect }
    }

    fn sample_due(&self, now: Instant) -> bool {
        // While draining, samples look whether the queue is gone: at the short interval.
        let every = if self.draining {
            SAMPLE_EVERY
        } else {
            self.sample_every
        };
        if !self.busy() || now.saturating_duration_since(self.last_sample) < every {
            return false;
        }
        if self.draining {
            !self.drain_confirmed
                && now.saturating_duration_since(self.drain_started) >= SETTLE_BEFORE_SAMPLING_DRAIN
        } else {
            self.hold_off_until.is_none_or(|until| now >= until)
        }
    }

    /// Whether changes arrive fast enough for writers to meet at the NOTIFY lock.
    fn busy(&self) -> bool {
        let window_so_far = self.window_rows as f64 / RATE_WINDOW.as_secs_f64();
        self.rate >= SAMPLE_ABOVE_RATE || window_so_far >= SAMPLE_ABOVE_RATE
    }

    /// The rate in the window so far, once it is half over (earlier, a backlog read at
    /// its start would count as a rate several times too high).
    fn partial_rate(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < RATE_WINDOW / 2 {
            return 0.0;
        }
        self.window_rows as f64 / elapsed.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a [`Pace`] on a clock of its own, against a model of the NOTIFY lock.
    struct Clock {
        pace: Pace,
        now: Instant,
        /// Writers commit fast enough to queue on the lock when they all ring ...
        crowded: bool,
        /// ... and their transactions also NOTIFY on their own, so they ring even while
        /// changecast drains.
        others_ring: bool,
    }

    impl Clock {
        fn new() -> Self {
            let now = Instant::now();
            Clock {
                pace: Pace::new(now),
                now,
                crowded: false,
                others_ring: false,
            }
        }

        fn batch(&mut self, rows: usize, after: Duration) -> Step {
            self.now += after;
            self.pace.after_batch(rows, self.now)
        }

        /// A batch, and the sample it may ask for answered by the model.
        fn step(&mut self, rows: usize, after: Duration) -> Step {
            match self.batch(rows, after) {
                Step::Sample => {
                    let queued = self.crowded && (self.others_ring || !self.pace.draining);
                    self.pace.after_sample(queued, self.now)
                }
                step => step,
            }
        }

        /// Batches of `rows` every `every` for `span`: the steps that change the mode.
        fn run(&mut self, rows: usize, every: Duration, span: Duration) -> Vec<Step> {
            let mut steps = Vec::new();
            let mut elapsed = Duration::ZERO;
            while elapsed < span {
                elapsed += every;
                let step = self.step(rows, every);
                if !matches!(step, Step::Wait(_) | Step::ReadAgain | Step::Pause(_)) {
                    steps.push(step);
                }
            }
            steps
        }
    }

    const MS: Duration = Duration::from_millis(1);
    const CALMER: Step = Step::StopDraining { had_effect: true };
    const NO_EFFECT: Step = Step::StopDraining { had_effect: false };

    #[test]
    fn a_busy_journal_keeps_its_wake_ups_while_writers_do_not_queue() {
        let mut clock = Clock::new();
        // Just connected: short polls first (writers that skipped ringing while a lost
        // connection drained may still be committing), doubling up to the safety net.
        assert_eq!(clock.batch(1, MS), Step::Wait(FIRST_POLL_AFTER_DRAINING));
        for _ in 0..20 {
            if clock.batch(0, 50 * MS) == Step::Wait(POLL_INTERVAL) {
                break;
            }
        }
        // A trickle: wait for wake-ups, polling as a safety net; nothing sampled.
        assert_eq!(clock.batch(1, MS), Step::Wait(POLL_INTERVAL));
        assert_eq!(clock.batch(0, 50 * MS), Step::Wait(POLL_INTERVAL));
        // 1,000 changes/s: the lock is sampled, ever less often while no writer waits,
        // down to once per SAMPLE_EVERY_CALM.
        assert_eq!(clock.run(1, MS, 200 * MS), vec![]);
        let count_samples = |clock: &mut Clock, span: Duration, queued_every: u32| {
            let (mut sampled, mut elapsed) = (0, Duration::ZERO);
            while elapsed < span {
                elapsed += MS;
                if clock.batch(1, MS) == Step::Sample {
                    sampled += 1;
                    // Not enough writers waiting to drain.
                    let queued = queued_every > 0 && sampled % queued_every == 0;
                    assert_eq!(
                        clock.pace.after_sample(queued, clock.now),
                        Step::Wait(POLL_INTERVAL)
                    );
                }
            }
            sampled
        };
        let calm = count_samples(&mut clock, 2000 * MS, 0);
        assert!((49..=51).contains(&calm), "{calm} samples in 2 s");
        // One sample in four sees a writer waiting: not enough to drain, and each one
        // brings the interval back to SAMPLE_EVERY (5, 10, 20 and 40 ms: 75 ms per four).
        let sometimes = count_samples(&mut clock, 2000 * MS, 4);
        assert!(
            (100..=112).contains(&sometimes),
            "{sometimes} samples in 2 s"
        );
    }

    #[test]
    fn writers_queueing_after_a_calm_spell_start_draining_soon() {
        let mut clock = Clock::new();
        // A busy, uncontended journal: sampled once per SAMPLE_EVERY_CALM by now.
        assert_eq!(clock.run(1, MS, 2000 * MS), vec![]);
        assert_eq!(clock.pace.sample_every, SAMPLE_EVERY_CALM);
        // Writers start queueing: the next sample sees it, and the ones after it come
        // at SAMPLE_EVERY again.
        clock.crowded = true;
        let mut waited = Duration::ZERO;
        while clock.step(1, MS) != Step::StartDraining {
            waited += MS;
            assert!(
                waited <= SAMPLE_EVERY_CALM + SAMPLES * SAMPLE_EVERY,
                "{waited:?}"
            );
        }
    }

    #[test]
    fn drains_while_writers_queue_and_waits_again_when_calm_or_quiet() {
        let mut clock = Clock::new();
        clock.crowded = true;
        // Writers queue on the lock: draining starts within the samples it takes, and
        // stays, since the queue is gone once changecast stops ringing.
        assert_eq!(clock.run(3, MS, 500 * MS), vec![Step::StartDraining]);
        assert!(clock.pace.draining);
        // Once draining is seen to empty the queue, the lock is not sampled again.
        assert!((0..100).all(|_| clock.batch(3, MS) != Step::Sample));
        // Draining: reads back to back while changes come, pauses briefly when not (in
        // a fresh rate window, so only the quiet reads can end it).
        assert_eq!(clock.step(300, 100 * MS), Step::ReadAgain);
        assert_eq!(clock.step(10, MS), Step::Pause(DRAIN_PAUSE));
        for _ in 1..QUIET_READS_TO_STOP_DRAINING {
            assert_eq!(clock.step(0, MS), Step::Pause(DRAIN_PAUSE));
        }
        assert_eq!(clock.step(0, MS), CALMER);
        // Then short polls, doubling, for writers that skipped ringing just before.
        let mut polls = Vec::new();
        while let Step::Wait(poll) = clock.step(0, MS) {
            polls.push(poll);
            if poll == POLL_INTERVAL {
                break;
            }
        }
        assert_eq!(polls[0], FIRST_POLL_AFTER_DRAINING);
        assert!(polls
            .windows(2)
            .all(|w| w[1] == (w[0] * 2).min(POLL_INTERVAL)));
        assert_eq!(*polls.last().unwrap(), POLL_INTERVAL);

        // Draining again at 3,000/s; the rate rising meanwhile keeps it draining ...
        assert_eq!(clock.run(3, MS, 200 * MS), vec![Step::StartDraining]);
        assert_eq!(clock.run(8, MS, 500 * MS), vec![]);
        // ... and it falling below half of 3,000/s ends it without a quiet spell.
        clock.crowded = false;
        assert_eq!(clock.run(1, MS, 300 * MS), vec![CALMER]);
        assert!(!clock.pace.draining);
    }

    #[test]
    fn draining_that_leaves_the_queue_is_given_up_for_a_while() {
        let mut clock = Clock::new();
        clock.crowded = true;
        clock.others_ring = true;
        // The writers' own NOTIFYs keep them queued while changecast drains: draining
        // is tried once, then given up ...
        assert_eq!(
            clock.run(2, MS, 500 * MS),
            vec![Step::StartDraining, NO_EFFECT]
        );
        // ... for HOLD_OFF_AFTER_NO_EFFECT, while wake-ups deliver ...
        let held = HOLD_OFF_AFTER_NO_EFFECT - 500 * MS;
        assert_eq!(clock.run(2, MS, held), vec![]);
        // ... then tried again.
        assert_eq!(
            clock.run(2, MS, 500 * MS),
            vec![Step::StartDraining, NO_EFFECT]
        );
        // Once only changecast rings, draining empties the queue and stays (but for a
        // look at the lock every DRAIN_AT_MOST, which finds the queue again).
        clock.others_ring = false;
        let steps = clock.run(2, MS, HOLD_OFF_AFTER_NO_EFFECT + 500 * MS);
        assert_eq!(steps.first(), Some(&Step::StartDraining));
        assert!(!steps.contains(&NO_EFFECT), "{steps:?}");
        assert!(clock.pace.draining);
    }

    #[test]
    fn a_queue_that_was_only_a_moment_does_not_keep_the_journal_draining() {
        let mut clock = Clock::new();
        // A stall makes writers queue for a moment: draining starts ...
        clock.crowded = true;
        assert_eq!(clock.run(1, MS, 200 * MS), vec![Step::StartDraining]);
        // ... and the steady load (no quiet reads, no fall in rate) no longer queues.
        clock.crowded = false;
        assert_eq!(clock.run(1, MS, DRAIN_AT_MOST), vec![CALMER]);
        // Back on wake-ups, and staying there.
        assert_eq!(clock.run(1, MS, 10 * DRAIN_AT_MOST), vec![]);
        assert!(!clock.pace.draining);
    }

    #[test]
    fn samples_from_an_earlier_burst_do_not_count() {
        let mut clock = Clock::new();
        // A short burst with writers queued: seven samples, one short of deciding.
        let mut samples = 0;
        while samples < SAMPLES - 1 {
            if clock.batch(5, MS) == Step::Sample {
                assert_ne!(
                    clock.pace.after_sample(true, clock.now),
                    Step::StartDraining
                );
                samples += 1;
            }
        }
        // A quiet spell, then a burst whose first sample sees a writer waiting: the
        // earlier samples are forgotten, so it does not drain on one sample.
        clock.batch(0, 500 * MS);
        clock.batch(0, 500 * MS);
        let mut step = clock.batch(50, MS);
        assert_eq!(step, Step::Sample);
        step = clock.pace.after_sample(true, clock.now);
        assert!(matches!(step, Step::Wait(_)), "{step:?}");
    }
}
