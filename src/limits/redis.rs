//! Limits in Redis, shared by every replica. Admission and settlement are single Lua scripts,
//! so concurrent requests on several gateways cannot both pass a limit that has room for one.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;
use tokio::sync::OnceCell;

use super::{Ask, BackendError, Counts, Refusal};

/// KEYS: requests, tokens, concurrency, spend. ARGV: rpm, tpm, concurrency, budget (-1 = none),
/// tokens to reserve. Returns {code, requests, tokens, spend}: code 0 admitted, 1 budget,
/// 2 concurrency, 3 rpm, 4 tpm.
const ADMIT: &str = r#"
local spend = tonumber(redis.call('GET', KEYS[4]) or '0')
local req = tonumber(redis.call('GET', KEYS[1]) or '0')
local tok = tonumber(redis.call('GET', KEYS[2]) or '0')
if tok < 0 then tok = 0 end
local budget, conc_limit = tonumber(ARGV[4]), tonumber(ARGV[3])
local rpm, tpm, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[5])
if budget >= 0 and spend >= budget then return {1, req, tok, spend} end
if conc_limit >= 0 then
  local conc = tonumber(redis.call('GET', KEYS[3]) or '0')
  if conc >= conc_limit then return {2, req, tok, spend} end
end
if rpm >= 0 and req + 1 > rpm then return {3, req, tok, spend} end
if tpm >= 0 and tok + want > tpm then return {4, req, tok, spend} end
req = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], 120)
tok = redis.call('INCRBY', KEYS[2], want)
redis.call('EXPIRE', KEYS[2], 120)
if conc_limit >= 0 then
  redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], 3600)
end
return {0, req, tok, spend}
"#;

/// KEYS: tokens, concurrency, spend. ARGV: token delta, release a slot (0/1), micro-dollars,
/// spend key TTL in seconds (0 = none).
const SETTLE: &str = r#"
if tonumber(ARGV[1]) ~= 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('INCRBY', KEYS[1], ARGV[1])
end
if ARGV[2] == '1' then
  local c = redis.call('DECR', KEYS[2])
  if c < 0 then redis.call('SET', KEYS[2], 0) end
end
if tonumber(ARGV[3]) ~= 0 then
  redis.call('INCRBY', KEYS[3], ARGV[3])
  if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', KEYS[3], ARGV[4]) end
end
return 1
"#;

pub struct Redis {
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
            url: url.to_string(),
            timeout,
            prefix: prefix.to_string(),
            conn: OnceCell::new(),
            admit: Script::new(ADMIT),
            settle: Script::new(SETTLE),
        }
    }

    /// The shared connection (reconnects by itself after failures).
    async fn conn(&self) -> Result<ConnectionManager, BackendError> {
        let c = self
            .conn
            .get_or_try_init(|| async {
                let client = redis::Client::open(self.url.as_str())
                    .map_err(|e| BackendError(format!("invalid REDIS_URL: {e}")))?;
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(self.timeout)
                    .set_response_timeout(self.timeout)
                    .set_number_of_retries(1);
                tokio::time::timeout(
                    self.timeout * 4,
                    ConnectionManager::new_with_config(client, cfg),
                )
                .await
                .map_err(|_| BackendError("connecting to Redis timed out".into()))?
                .map_err(|e| BackendError(format!("connecting to Redis: {e}")))
            })
            .await?;
        Ok(c.clone())
    }

    fn key(&self, id: &str, what: &str) -> String {
        format!("{}:{{{id}}}:{what}", self.prefix)
    }

    pub async fn admit(&self, a: &Ask) -> Result<Result<Counts, (Refusal, Counts)>, BackendError> {
        let mut conn = self.conn().await?;
        let opt = |v: Option<u64>| v.map_or(-1, |x| x as i64);
        let mut inv = self.admit.prepare_invoke();
        inv.key(self.key(&a.id, &format!("r:{}", a.minute)))
            .key(self.key(&a.id, &format!("t:{}", a.minute)))
            .key(self.key(&a.id, "c"))
            .key(self.key(&a.id, &format!("s:{}", a.period)))
            .arg(opt(a.rpm))
            .arg(opt(a.tpm))
            .arg(opt(a.concurrent))
            .arg(a.budget_micro.unwrap_or(-1))
            .arg(a.tokens);
        let r: Vec<i64> = tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn))
            .await
            .map_err(|_| BackendError("Redis timed out".into()))?
            .map_err(|e| BackendError(e.to_string()))?;
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

    pub async fn settle(&self, a: &Ask, token_delta: i64, micro: i64) -> Result<(), BackendError> {
        let mut conn = self.conn().await?;
        let ttl: u64 = match a.period.chars().next() {
            Some('d') => 2 * 86_400,
            Some('w') => 8 * 86_400,
            Some('m') => 32 * 86_400,
            _ => 0,
        };
        let mut inv = self.settle.prepare_invoke();
        inv.key(self.key(&a.id, &format!("t:{}", a.minute)))
            .key(self.key(&a.id, "c"))
            .key(self.key(&a.id, &format!("s:{}", a.period)))
            .arg(token_delta)
            .arg(u8::from(a.concurrent.is_some()))
            .arg(micro)
            .arg(ttl);
        let _: i64 = tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn))
            .await
            .map_err(|_| BackendError("Redis timed out".into()))?
            .map_err(|e| BackendError(e.to_string()))?;
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
            self.key(id, &format!("r:{minute}")),
            self.key(id, &format!("t:{minute}")),
            self.key(id, &format!("s:{period}")),
        ];
        let v: Vec<Option<i64>> = tokio::time::timeout(
            self.timeout,
            redis::cmd("MGET").arg(&keys).query_async(&mut conn),
        )
        .await
        .map_err(|_| BackendError("Redis timed out".into()))?
        .map_err(|e| BackendError(e.to_string()))?;
        let get = |i: usize| v.get(i).copied().flatten().unwrap_or(0);
        Ok(Counts {
            requests: get(0).max(0) as u64,
            tokens: get(1).max(0) as u64,
            spend_micro: get(2),
        })
    }
}
