//! "Charge once": several workers race to charge the same orders; each order
//! is charged exactly once.
//!
//! ```text
//! cargo run -p distlock-examples --bin charge_once                                  # in memory
//! REDIS_URL=redis://127.0.0.1:6379 cargo run -p distlock-examples --bin charge_once  # on Redis
//! ```
//!
//! What it shows:
//! - the backend chosen at run time (`Locker<Arc<dyn LockBackend>>`);
//! - `try_with_lock_with` for work that returns `Result`, with the per-call
//!   option `auto_renew` on top of the locker's defaults;
//! - the lost signal: the payment call races `lease.lost()` and gives up
//!   when the lease is gone;
//! - fencing: the payment store refuses a charge whose fencing token is
//!   lower than one it has already seen for that order, and keeps a record
//!   of what was charged, so a retry after success does nothing.
//!
//! Exits with status 1 if any order was charged more or less than once.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distlock::{LockBackend, LockError, LockOptions, Locker};
use distlock_memory::MemoryBackend;
use distlock_redis::RedisBackend;

const ORDERS: usize = 5;
const WORKERS: usize = 4;

/// What can go wrong while charging one order.
#[derive(Debug, thiserror::Error)]
enum ChargeError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("the lease on {0} was lost before the payment call finished; not charged")]
    LeaseLost(String),
    #[error("the payment store refused fencing token {fence} for {order} (it has seen {seen})")]
    StaleFence {
        order: String,
        fence: u64,
        seen: u64,
    },
}

/// How one worker's attempt ended.
enum Outcome {
    Charged { fence: u64 },
    AlreadyCharged,
}

/// The payment side: per order, the highest fencing token seen and whether
/// it was charged. A real store does this in one conditional write
/// (`UPDATE orders SET charged = true, fence = $f WHERE id = $id AND fence <= $f`).
#[derive(Clone, Default)]
struct Payments {
    orders: Arc<Mutex<HashMap<String, (u64, u32)>>>,
}

impl Payments {
    fn already_charged(&self, order: &str) -> bool {
        let orders = self.orders.lock().unwrap();
        orders.get(order).is_some_and(|&(_, charges)| charges > 0)
    }

    fn charge(&self, order: &str, fence: u64) -> Result<(), ChargeError> {
        let mut orders = self.orders.lock().unwrap();
        let entry = orders.entry(order.to_owned()).or_default();
        if fence < entry.0 {
            return Err(ChargeError::StaleFence {
                order: order.to_owned(),
                fence,
                seen: entry.0,
            });
        }
        entry.0 = fence;
        entry.1 += 1;
        Ok(())
    }

    fn charges(&self, order: &str) -> u32 {
        let orders = self.orders.lock().unwrap();
        orders.get(order).map_or(0, |&(_, charges)| charges)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<bool, Box<dyn std::error::Error>> {
    // The backend is chosen at run time; the locker's type does not change.
    let backend: Arc<dyn LockBackend> = match std::env::var("REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => {
            // The URL may hold a password: print only the backend kind.
            println!("backend: Redis (REDIS_URL)");
            Arc::new(RedisBackend::from_url(&url)?)
        }
        _ => {
            println!("backend: in-memory (set REDIS_URL to use Redis)");
            Arc::new(MemoryBackend::new())
        }
    };
    let locker: Locker<Arc<dyn LockBackend>> = Locker::new(backend)
        .with_prefix(format!("example-charge:{}", std::process::id()))?
        .with_defaults(
            LockOptions::default()
                .with_ttl(Duration::from_secs(2))
                .with_wait_timeout(Duration::from_secs(10))
                .with_owner_host_pid(),
        )?;
    let payments = Payments::default();

    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let (locker, payments) = (locker.clone(), payments.clone());
        workers.push(tokio::spawn(async move {
            for n in 0..ORDERS {
                let order = format!("order-{n}");
                match charge(&locker, &payments, &order).await {
                    Ok(Outcome::Charged { fence }) => {
                        println!("worker {worker}: charged {order} (fencing token {fence})")
                    }
                    Ok(Outcome::AlreadyCharged) => {
                        println!("worker {worker}: {order} was already charged")
                    }
                    Err(e) => println!("worker {worker}: {order}: {e}"),
                }
            }
        }));
    }
    for worker in workers {
        worker.await?;
    }

    let mut ok = true;
    for n in 0..ORDERS {
        let order = format!("order-{n}");
        let charges = payments.charges(&order);
        if charges != 1 {
            println!("{order} was charged {charges} times");
            ok = false;
        }
    }
    if ok {
        println!("done: {ORDERS} orders, each charged exactly once by {WORKERS} racing workers");
    }
    Ok(ok)
}

/// Charges `order` unless it was charged already, under its lock.
async fn charge<B: LockBackend>(
    locker: &Locker<B>,
    payments: &Payments,
    order: &str,
) -> Result<Outcome, ChargeError> {
    locker
        .try_with_lock_with(
            format!("charge:{order}"),
            // On top of the defaults (TTL, wait timeout, owner): renew while
            // the payment call runs.
            |o| o.with_auto_renew(true),
            |lease| async move {
                if payments.already_charged(order) {
                    return Ok(Outcome::AlreadyCharged);
                }
                tokio::select! {
                    // The lease is gone: stop before charging.
                    _ = lease.lost() => Err(ChargeError::LeaseLost(order.to_owned())),
                    // The payment provider's call (pretend).
                    _ = tokio::time::sleep(Duration::from_millis(30)) => {
                        payments.charge(order, lease.fence())?;
                        Ok(Outcome::Charged { fence: lease.fence() })
                    }
                }
            },
        )
        .await
}
