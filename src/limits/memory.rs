//! Limits in this process's memory: the default, and the fallback of `fail_open`.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Ask, Counts, Refusal, Settlement};

#[derive(Default)]
struct Entry {
    minute: u64,
    requests: u64,
    tokens: i64,
    concurrent: u64,
    period: String,
    spend_micro: i64,
    /// Cost reserved by requests in flight (across periods: a request that started in the
    /// last period still holds its reservation).
    reserved_micro: i64,
}

impl Entry {
    /// Rolls the minute window and the budget period forward, never back: a caller that read
    /// the clock just before another rolled the entry leaves the newer window alone (its
    /// counts land in it).
    fn roll(&mut self, minute: u64, period: &str) {
        if minute < self.minute {
            return;
        }
        if minute > self.minute {
            self.minute = minute;
            self.requests = 0;
            self.tokens = 0;
        }
        if self.period != period {
            self.period = period.to_string();
            self.spend_micro = 0;
        }
    }

    fn counts(&self) -> Counts {
        Counts {
            requests: self.requests,
            tokens: self.tokens.max(0) as u64,
            spend_micro: self.spend_micro,
        }
    }
}

#[derive(Default)]
pub struct Memory {
    by_id: Mutex<HashMap<String, Entry>>,
    admissions: std::sync::atomic::AtomicU64,
}

/// Every this many admissions, entries of principals idle since an earlier budget period are
/// dropped (OIDC can bring any number of subjects).
const PRUNE_EVERY: u64 = 10_000;

impl Memory {
    fn with<R>(&self, id: &str, f: impl FnOnce(&mut Entry) -> R) -> R {
        let mut map = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        // Looked up before inserting: the id is copied only for a principal's first request.
        if let Some(e) = map.get_mut(id) {
            return f(e);
        }
        f(map.entry(id.to_string()).or_default())
    }

    /// Drops principals with nothing to remember: no request in flight, no request this or
    /// last minute, and a budget period that is over (its spend no longer counts).
    fn prune(&self, minute: u64) {
        use crate::config::auth::BudgetPeriod as P;
        let now = minute * 60;
        let current: Vec<String> = [P::Daily, P::Weekly, P::Monthly, P::Total]
            .into_iter()
            .map(|p| super::period_key(p, now))
            .collect();
        let mut map = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, e| {
            e.concurrent > 0 || e.minute + 1 >= minute || current.contains(&e.period)
        });
    }

    pub fn admit(&self, a: &Ask) -> Result<Counts, (Refusal, Counts)> {
        let n = self
            .admissions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.prune(a.minute);
        }
        self.with(&a.id, |e| {
            e.roll(a.minute, &a.period);
            if a.budget_micro
                .is_some_and(|b| e.spend_micro.saturating_add(e.reserved_micro) >= b)
            {
                return Err((Refusal::Budget, e.counts()));
            }
            if a.concurrent.is_some_and(|c| e.concurrent >= c) {
                return Err((Refusal::Concurrency, e.counts()));
            }
            if a.rpm.is_some_and(|r| e.requests + 1 > r) {
                return Err((Refusal::Rpm, e.counts()));
            }
            if a.tpm.is_some_and(|t| e.tokens.max(0) as u64 + a.tokens > t) {
                return Err((Refusal::Tpm, e.counts()));
            }
            if a.counts_request {
                e.requests += 1;
            }
            e.tokens += a.tokens as i64;
            e.reserved_micro = e.reserved_micro.saturating_add(a.cost_micro);
            if a.concurrent.is_some() {
                e.concurrent += 1;
            }
            Ok(e.counts())
        })
    }

    /// Releases `a`'s reservations (its tokens only while their minute is current) and books
    /// what was used in the minute and period the request ends in.
    pub fn settle(&self, a: &Ask, at: &Settlement) {
        self.with(&a.id, |e| {
            if e.minute == a.minute {
                e.tokens -= a.tokens as i64;
            }
            e.roll(at.minute, &at.period);
            e.tokens += at.tokens as i64;
            e.reserved_micro = (e.reserved_micro - a.cost_micro).max(0);
            if a.concurrent.is_some() {
                e.concurrent = e.concurrent.saturating_sub(1);
            }
            e.spend_micro = e.spend_micro.saturating_add(at.micro.max(0));
        })
    }

    /// A period's spend from the store's ledger (at start): kept unless more is already known.
    pub fn seed_spend(&self, id: &str, minute: u64, period: &str, micro: i64) {
        self.with(id, |e| {
            e.roll(minute, period);
            if e.period == period {
                e.spend_micro = e.spend_micro.max(micro);
            }
        });
    }

    /// Redis failed at settlement: keep the spend here at least.
    pub fn settle_spend_only(&self, id: &str, at: &Settlement) {
        self.with(id, |e| {
            e.roll(e.minute, &at.period);
            e.spend_micro = e.spend_micro.saturating_add(at.micro.max(0));
        })
    }

    pub fn counts(&self, id: &str, minute: u64, period: &str) -> Counts {
        self.with(id, |e| {
            e.roll(minute, period);
            e.counts()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(tokens: u64) -> Ask {
        Ask {
            id: "k".into(),
            minute: 1,
            period: "all".into(),
            rpm: Some(3),
            tpm: Some(100),
            concurrent: Some(2),
            budget_micro: Some(1_000),
            budget_period: crate::config::auth::BudgetPeriod::Total,
            tokens,
            cost_micro: 0,
            counts_request: true,
            lease: "r".into(),
        }
    }

    fn at(minute: u64, tokens: u64, micro: i64) -> Settlement {
        Settlement {
            tokens,
            micro,
            minute,
            period: "all".into(),
        }
    }

    #[test]
    fn pruning_keeps_current_spend() {
        let m = Memory::default();
        let now_min = 30_000_000; // some minute in 2027
        let period =
            super::super::period_key(crate::config::auth::BudgetPeriod::Monthly, now_min * 60);
        let mut keep = ask(0);
        keep.id = "current".into();
        keep.minute = now_min - 100;
        keep.period = period.clone();
        m.admit(&keep).unwrap();
        m.settle(
            &keep,
            &Settlement {
                tokens: 0,
                micro: 5,
                minute: now_min - 100,
                period: period.clone(),
            },
        );
        let mut old = keep.clone();
        old.id = "stale".into();
        old.period = "m190001".into();
        m.admit(&old).unwrap();
        m.settle(
            &old,
            &Settlement {
                tokens: 0,
                micro: 5,
                minute: now_min - 100,
                period: "m190001".into(),
            },
        );
        m.prune(now_min);
        let map = m.by_id.lock().unwrap();
        assert!(map.contains_key("current"));
        assert!(!map.contains_key("stale"));
    }

    #[test]
    fn every_limit_and_settlement() {
        let m = Memory::default();
        assert!(m.admit(&ask(40)).is_ok());
        assert!(m.admit(&ask(40)).is_ok());
        assert_eq!(m.admit(&ask(1)).unwrap_err().0, Refusal::Concurrency);
        // The first used only 10 tokens: 50 of 100 counted now, and a slot is free.
        m.settle(&ask(40), &at(1, 10, 600));
        assert_eq!(m.admit(&ask(51)).unwrap_err().0, Refusal::Tpm);
        assert_eq!(m.admit(&ask(50)).unwrap().requests, 3);
        m.settle(&ask(30), &at(1, 30, 0));
        assert_eq!(m.admit(&ask(0)).unwrap_err().0, Refusal::Rpm);
        // A new minute: requests and tokens reset, spend and slots do not.
        let mut next = ask(0);
        next.minute = 2;
        m.settle(&ask(40), &at(1, 40, 500));
        assert_eq!(m.admit(&next).unwrap_err().0, Refusal::Budget);
        assert_eq!(m.counts("k", 2, "all").spend_micro, 1_100);
    }

    #[test]
    fn settlement_lands_in_the_minute_the_request_ends() {
        let m = Memory::default();
        let mut a = ask(30);
        a.budget_micro = None;
        a.concurrent = None;
        m.admit(&a).unwrap();
        // Ends in minute 2 having used 90: minute 1's reservation is gone with minute 1, and
        // minute 2 carries the 90.
        m.settle(&a, &at(2, 90, 0));
        assert_eq!(m.counts("k", 2, "all").tokens, 90);
        let mut b = ask(11);
        b.minute = 2;
        b.budget_micro = None;
        b.concurrent = None;
        assert_eq!(m.admit(&b).unwrap_err().0, Refusal::Tpm);
    }

    #[test]
    fn budget_reservations_bound_parallel_overshoot() {
        let m = Memory::default();
        let mut a = ask(0);
        a.rpm = None;
        a.concurrent = None;
        a.cost_micro = 400;
        // Budget 1000: reservations of 400 admit three (0, 400, 800 < 1000), not a fourth.
        for _ in 0..3 {
            m.admit(&a).unwrap();
        }
        assert_eq!(m.admit(&a).unwrap_err().0, Refusal::Budget);
        // One settles at 100: 100 spent + 800 reserved < 1000 admits again.
        m.settle(&a, &at(1, 0, 100));
        m.admit(&a).unwrap();
        assert_eq!(m.admit(&a).unwrap_err().0, Refusal::Budget);
        // A round admission counts no request.
        let mut r = ask(0);
        r.id = "other".into();
        r.rpm = Some(1);
        r.counts_request = false;
        m.admit(&r).unwrap();
        m.admit(&r).unwrap();
        assert_eq!(m.counts("other", 1, "all").requests, 0);
    }
}
