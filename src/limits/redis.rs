//! Limits in Redis, shared by every replica. Admission and settlement are single Lua scripts,
//! so concurrent requests on several gateways cannot both pass a limit that has room for one.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Cmd, ErrorKind, FromRedisValue, Script};
use tokio::sync::OnceCell;

use super::{Ask, BackendError, Counts, Refusal, Settlement};

/// KEYS: requests, tokens, concurrency (a sorted set of leases), spend, reserved spend (a hash
/// lease -> micro-dollars), reservation expiries (a sorted set of leases). ARGV: rpm, tpm,
/// concurrency, budget (-1 = none), tokens to reserve, now (ms), lease (ms), lease id,
/// micro-dollars to reserve, whether the call counts as a request (1/0).
/// Returns {code, requests, tokens, spend}: code 0 admitted, 1 budget, 2 concurrency, 3 rpm,
/// 4 tpm. A concurrency slot and a budget reservation are leases that expire on their own: a
/// replica that dies (or a settlement that never reaches Redis) cannot hold a slot or reserved
/// spend for longer than the lease.
const ADMIT: &str = r#"
local now = tonumber(ARGV[6])
local spend = tonumber(redis.call('GET', KEYS[4]) or '0')
local req = tonumber(redis.call('GET', KEYS[1]) or '0')
local tok = tonumber(redis.call('GET', KEYS[2]) or '0')
if tok < 0 then tok = 0 end
local budget, conc_limit = tonumber(ARGV[4]), tonumber(ARGV[3])
local rpm, tpm, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[5])
local cost = tonumber(ARGV[9])
if budget >= 0 then
  local reserved = 0
  for _, lease in ipairs(redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now)) do
    redis.call('HDEL', KEYS[5], lease)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
  for _, v in ipairs(redis.call('HVALS', KEYS[5])) do reserved = reserved + tonumber(v) end
  if spend + reserved >= budget then return {1, req, tok, spend} end
end
if conc_limit >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  local conc = redis.call('ZCARD', KEYS[3])
  if conc >= conc_limit then return {2, req, tok, spend} end
end
if rpm >= 0 and req + 1 > rpm then return {3, req, tok, spend} end
if tpm >= 0 and tok + want > tpm then return {4, req, tok, spend} end
if ARGV[10] == '1' then
  req = redis.call('INCR', KEYS[1])
  redis.call('EXPIRE', KEYS[1], 120)
end
tok = redis.call('INCRBY', KEYS[2], want)
redis.call('EXPIRE', KEYS[2], 120)
if cost > 0 then
  redis.call('HSET', KEYS[5], ARGV[8], cost)
  redis.call('ZADD', KEYS[6], now + tonumber(ARGV[7]), ARGV[8])
  redis.call('PEXPIRE', KEYS[5], ARGV[7])
  redis.call('PEXPIRE', KEYS[6], ARGV[7])
end
if conc_limit >= 0 then
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[7]), ARGV[8])
  redis.call('PEXPIRE', KEYS[3], ARGV[7])
end
return {0, req, tok, spend}
"#;

/// KEYS: tokens of the admission's minute, tokens of the current minute, concurrency leases,
/// spend of the current period, reserved spend, reservation expiries. ARGV: tokens reserved,
/// tokens used, release the concurrency lease (1/0), micro-dollars spent, spend key TTL in
/// seconds (0 = none), release a budget reservation (1/0), lease id. The token reservation
/// leaves the minute it was made in (if that window still exists); the usage lands in the
/// minute the request ends in.
const SETTLE: &str = r#"
local reserved, used = tonumber(ARGV[1]), tonumber(ARGV[2])
if KEYS[1] == KEYS[2] then
  if used - reserved ~= 0 and redis.call('EXISTS', KEYS[1]) == 1 then
    redis.call('INCRBY', KEYS[1], used - reserved)
  end
else
  if reserved ~= 0 and redis.call('EXISTS', KEYS[1]) == 1 then
    redis.call('DECRBY', KEYS[1], reserved)
  end
  if used ~= 0 then
    redis.call('INCRBY', KEYS[2], used)
    redis.call('EXPIRE', KEYS[2], 120)
  end
end
if ARGV[3] == '1' then
  redis.call('ZREM', KEYS[3], ARGV[7])
end
if tonumber(ARGV[4]) ~= 0 then
  redis.call('INCRBY', KEYS[4], ARGV[4])
  if tonumber(ARGV[5]) > 0 then redis.call('EXPIRE', KEYS[4], ARGV[5]) end
end
if ARGV[6] == '1' then
  redis.call('HDEL', KEYS[5], ARGV[7])
  redis.call('ZREM', KEYS[6], ARGV[7])
end
return 1
"#;

/// How long a concurrency slot or a budget reservation is held at most (a stream longer than
/// this stops counting toward `max_concurrent` and its reservation toward the budget).
const LEASE: Duration = Duration::from_secs(600);
/// After a failure, Redis is skipped this long (requests go to the failure mode at once
/// instead of each waiting for a timeout).
const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// What follows a key's kind in its name.
enum KeyPart<'a> {
    None,
    /// A minute's number.
    Number(u64),
    /// A budget period (`d2026-12-02`...).
    Text(&'a str),
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A reconnecting Redis connection bounded by `timeout` per call (shared by the limits and the
/// reasoning vault).
/// How long a period's spend key lives (past its period; 0: for ever).
fn spend_ttl(period: &str) -> u64 {
    match period.chars().next() {
        Some('d') => 2 * 86_400,
        Some('w') => 8 * 86_400,
        Some('m') => 32 * 86_400,
        _ => 0,
    }
}

pub(crate) async fn connect(url: &str, timeout: Duration) -> Result<ConnectionManager, String> {
    let client = redis::Client::open(url).map_err(|e| format!("invalid REDIS_URL: {e}"))?;
    let cfg = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(timeout)
        .set_number_of_retries(1);
    ConnectionManager::new_with_config(client, cfg)
        .await
        .map_err(|e| format!("connecting to Redis: {e}"))
}

pub struct Redis {
    down_until_ms: std::sync::atomic::AtomicU64,
    url: String,
    timeout: Duration,
    prefix: String,
    conn: OnceCell<ConnectionManager>,
    admit: Script,
    settle: Script,
}

impl Redis {
    pub fn new(url: &str, timeout: Duration, prefix: &str) -> Redis {
        Redis {
            down_until_ms: std::sync::atomic::AtomicU64::new(0),
            url: url.to_string(),
            timeout,
            prefix: prefix.to_string(),
            conn: OnceCell::new(),
            admit: Script::new(ADMIT),
            settle: Script::new(SETTLE),
        }
    }

    /// Runs a Redis operation with the timeout; a failure pauses Redis briefly.
    async fn guarded<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        use std::sync::atomic::Ordering;
        if now_ms() < self.down_until_ms.load(Ordering::Relaxed) {
            return Err(BackendError(
                "Redis failed moments ago; not retried yet".into(),
            ));
        }
        let r = match tokio::time::timeout(self.timeout, op).await {
            Ok(r) => r,
            Err(_) => Err(BackendError("Redis timed out".into())),
        };
        if r.is_err() {
            self.down_until_ms.store(
                now_ms() + PAUSE_AFTER_FAILURE.as_millis() as u64,
                Ordering::Relaxed,
            );
        }
        r
    }

    /// The shared connection (reconnects by itself after failures).
    async fn conn(&self) -> Result<ConnectionManager, BackendError> {
        let c = self
            .conn
            .get_or_try_init(|| connect(&self.url, self.timeout))
            .await
            .map_err(BackendError)?;
        Ok(c.clone())
    }

    /// The caller's key `<prefix>:{<id>}:<what><n>`, written into `buf` (cleared first). Every
    /// key name is made here, so the scripts that write counters and the reads of them agree.
    fn write_key(&self, buf: &mut Vec<u8>, id: &str, what: &str, n: KeyPart) {
        buf.clear();
        buf.extend_from_slice(self.prefix.as_bytes());
        buf.extend_from_slice(b":{");
        buf.extend_from_slice(id.as_bytes());
        buf.extend_from_slice(b"}:");
        buf.extend_from_slice(what.as_bytes());
        match n {
            KeyPart::None => {}
            KeyPart::Number(n) => buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
            KeyPart::Text(t) => buf.extend_from_slice(t.as_bytes()),
        }
    }

    /// A key as its own value (calls made once, off the request path).
    fn key(&self, id: &str, what: &str, n: KeyPart) -> Vec<u8> {
        let mut buf = Vec::with_capacity(64);
        self.write_key(&mut buf, id, what, n);
        buf
    }

    /// `EVALSHA` of `script` with its six keys and the arguments `cmd` gets from `args`, built
    /// as one command (redis-rs's `ScriptInvocation` allocates every key and argument apart and
    /// copies them again into the command). Loads the script on Redis's `NOSCRIPT` (a new or
    /// restarted server) and runs it again, as `invoke_async` does.
    async fn run_script<T: FromRedisValue>(
        &self,
        script: &Script,
        source: &str,
        keys: [(&str, KeyPart<'_>); 6],
        id: &str,
        args: impl FnOnce(&mut Cmd),
    ) -> Result<T, BackendError> {
        let mut conn = self.conn().await?;
        let mut cmd = Cmd::with_capacity(20, 512);
        cmd.arg("EVALSHA").arg(script.get_hash()).arg(keys.len());
        let mut buf = Vec::with_capacity(64);
        // One buffer for all of a command's keys (two commands per request).
        for (what, n) in keys {
            self.write_key(&mut buf, id, what, n);
            cmd.arg(&buf[..]);
        }
        args(&mut cmd);
        let r = match cmd.query_async(&mut conn).await {
            Err(e) if e.kind() == ErrorKind::NoScriptError => {
                let mut load = redis::cmd("SCRIPT");
                load.arg("LOAD").arg(source);
                load.query_async::<String>(&mut conn)
                    .await
                    .map_err(|e| BackendError(e.to_string()))?;
                cmd.query_async(&mut conn).await
            }
            r => r,
        };
        r.map_err(|e| BackendError(e.to_string()))
    }

    pub async fn admit(&self, a: &Ask) -> Result<Result<Counts, (Refusal, Counts)>, BackendError> {
        self.guarded(self.admit_inner(a)).await
    }

    async fn admit_inner(
        &self,
        a: &Ask,
    ) -> Result<Result<Counts, (Refusal, Counts)>, BackendError> {
        let opt = |v: Option<u64>| v.map_or(-1, |x| x as i64);
        let keys = [
            ("r:", KeyPart::Number(a.minute)),
            ("t:", KeyPart::Number(a.minute)),
            ("c", KeyPart::None),
            ("s:", KeyPart::Text(&a.period)),
            ("sr", KeyPart::None),
            ("srx", KeyPart::None),
        ];
        let r: Vec<i64> = self
            .run_script(&self.admit, ADMIT, keys, &a.id, |cmd| {
                cmd.arg(opt(a.rpm))
                    .arg(opt(a.tpm))
                    .arg(opt(a.concurrent))
                    .arg(a.budget_micro.unwrap_or(-1))
                    .arg(a.tokens)
                    .arg(now_ms())
                    .arg(LEASE.as_millis() as u64)
                    .arg(&a.lease)
                    .arg(a.cost_micro)
                    .arg(if a.counts_request { "1" } else { "0" });
            })
            .await?;
        let c = Counts {
            requests: r.get(1).copied().unwrap_or(0).max(0) as u64,
            tokens: r.get(2).copied().unwrap_or(0).max(0) as u64,
            spend_micro: r.get(3).copied().unwrap_or(0),
        };
        Ok(match r.first().copied().unwrap_or(0) {
            0 => Ok(c),
            1 => Err((Refusal::Budget, c)),
            2 => Err((Refusal::Concurrency, c)),
            3 => Err((Refusal::Rpm, c)),
            _ => Err((Refusal::Tpm, c)),
        })
    }

    pub async fn settle(&self, a: &Ask, at: &Settlement) -> Result<(), BackendError> {
        self.guarded(self.settle_inner(a, at)).await
    }

    /// Sets a period's spend where Redis has none (from the store's ledger at start: never
    /// added twice, and never over a counter replicas already share).
    pub async fn seed_spend(&self, id: &str, period: &str, micro: i64) -> Result<(), BackendError> {
        self.guarded(async {
            let mut conn = self.conn().await?;
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.key(id, "s:", KeyPart::Text(period)))
                .arg(micro)
                .arg("NX");
            let ttl = spend_ttl(period);
            if ttl > 0 {
                cmd.arg("EX").arg(ttl);
            }
            cmd.query_async::<Option<String>>(&mut conn)
                .await
                .map(|_| ())
                .map_err(|e| BackendError(e.to_string()))
        })
        .await
    }

    async fn settle_inner(&self, a: &Ask, at: &Settlement) -> Result<(), BackendError> {
        let ttl = spend_ttl(&at.period);
        let keys = [
            ("t:", KeyPart::Number(a.minute)),
            ("t:", KeyPart::Number(at.minute)),
            ("c", KeyPart::None),
            ("s:", KeyPart::Text(&at.period)),
            ("sr", KeyPart::None),
            ("srx", KeyPart::None),
        ];
        let _: i64 = self
            .run_script(&self.settle, SETTLE, keys, &a.id, |cmd| {
                cmd.arg(a.tokens)
                    .arg(at.tokens)
                    .arg(if a.concurrent.is_some() { "1" } else { "0" })
                    .arg(at.micro)
                    .arg(ttl)
                    .arg(if a.cost_micro > 0 { "1" } else { "0" })
                    .arg(&a.lease);
            })
            .await?;
        Ok(())
    }

    pub async fn counts(
        &self,
        id: &str,
        minute: u64,
        period: &str,
    ) -> Result<Counts, BackendError> {
        let mut conn = self.conn().await?;
        let keys = [
            self.key(id, "r:", KeyPart::Number(minute)),
            self.key(id, "t:", KeyPart::Number(minute)),
            self.key(id, "s:", KeyPart::Text(period)),
        ];
        let v: Vec<Option<i64>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .map_err(|e| BackendError(e.to_string()))?;
        let get = |i: usize| v.get(i).copied().flatten().unwrap_or(0);
        Ok(Counts {
            requests: get(0).max(0) as u64,
            tokens: get(1).max(0) as u64,
            spend_micro: get(2),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_keep_their_form() {
        // Counters already in Redis (and other replicas during an upgrade) use these names: the
        // id in braces is the cluster hash tag, so one caller's keys share a slot.
        let r = Redis::new("redis://127.0.0.1:1", Duration::from_millis(10), "igw");
        assert_eq!(
            r.key("k1", "r:", KeyPart::Number(29_000_123)),
            b"igw:{k1}:r:29000123"
        );
        assert_eq!(
            r.key("k1", "s:", KeyPart::Text("d20424")),
            b"igw:{k1}:s:d20424"
        );
        assert_eq!(r.key("team:a", "srx", KeyPart::None), b"igw:{team:a}:srx");
        // The shared buffer is cleared for each key.
        let mut buf = b"leftover".to_vec();
        r.write_key(&mut buf, "k2", "c", KeyPart::None);
        assert_eq!(buf, b"igw:{k2}:c");
    }
}
