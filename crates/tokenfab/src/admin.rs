//! `tokenfab keys`, `tokenfab accounts` and `tokenfab usage`: the operator's side of the
//! ledger, straight on its database (the server need not run; a running one sees changes
//! to keys within seconds and to balances at once).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use tokenfab_platform::days;
use tokenfab_platform::money::Money;
use tokenfab_platform::store::{Store, unix_now};

use crate::config::FileConfig;

/// Where the ledger is.
#[derive(Args, Clone)]
pub struct DbArgs {
    /// `sqlite://PATH` or `postgres://USER@HOST/DB` (default: the config file's
    /// `database_url`, else a SQLite file in the data directory).
    #[arg(long, env = "TOKENFAB_DATABASE_URL", global = true)]
    database: Option<String>,
    /// The server's config file, for its `database_url`.
    #[arg(long, short, env = "TOKENFAB_CONFIG", global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Make a key for an account; it is printed once and only its hash is kept.
    Create {
        #[arg(long)]
        account: String,
    },
    /// Every key: id, prefix, account, created, last used, revoked.
    List,
    /// Revoke a key by id or by the prefix `keys list` shows.
    Revoke { key: String },
}

#[derive(Subcommand)]
pub enum AccountsCommand {
    /// Open an account (balance 0.00).
    Create {
        name: String,
        /// The rate-limit tier (`[limits.TIER]` in the config).
        #[arg(long, default_value = "default")]
        tier: String,
    },
    /// Add money to an account (`--add 10.00`; negative to take it back).
    TopUp {
        name: String,
        #[arg(long, allow_hyphen_values = true)]
        add: String,
        #[arg(long, default_value = "top-up")]
        note: String,
    },
    /// One account's balance, or all accounts'.
    Show { name: Option<String> },
}

#[derive(Args)]
pub struct UsageArgs {
    /// First UTC day, YYYY-MM-DD (default: today).
    #[arg(long)]
    from: Option<String>,
    /// Last UTC day, inclusive (default: `--from`, or today).
    #[arg(long)]
    to: Option<String>,
    #[command(flatten)]
    db: DbArgs,
}

/// `$XDG_DATA_HOME/tokenfab`, else `~/.local/share/tokenfab`.
pub fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("tokenfab");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/share/tokenfab")
}

/// The ledger URL from a flag, the config file, or the default SQLite file (whose
/// directory is created).
pub fn database_url(flag: Option<&str>, cfg: &FileConfig) -> anyhow::Result<String> {
    if let Some(url) = flag.map(str::to_owned).or(cfg.database_url.clone()) {
        return Ok(url);
    }
    let dir = data_dir();
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    Ok(format!("sqlite://{}", dir.join("tokenfab.db").display()))
}

/// A URL with its password hidden, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let user = &url[s + 3..at];
            match user.split_once(':') {
                Some((u, _)) => format!("{}{u}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "tokenfab".into())
}

fn with_store<T>(
    db: &DbArgs,
    f: impl AsyncFnOnce(Store) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let cfg = match &db.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let url = database_url(db.database.as_deref(), &cfg)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let store = Store::open(&url)
            .await
            .with_context(|| format!("cannot open the ledger {}", redact(&url)))?;
        f(store).await
    })
}

fn when(t: Option<i64>) -> String {
    t.map_or_else(|| "-".into(), |t| days::format(t.div_euclid(86_400)))
}

pub fn keys(command: KeysCommand, db: DbArgs) -> anyhow::Result<()> {
    with_store(&db, async move |store| {
        match command {
            KeysCommand::Create { account } => {
                let (secret, rec) = store.create_key(&account).await?;
                eprintln!(
                    "key #{} for account `{}` (shown once: store it now)",
                    rec.id, rec.account
                );
                println!("{secret}");
            }
            KeysCommand::List => {
                println!(
                    "{:>5}  {:<12} {:<20} {:<10} {:<10} revoked",
                    "id", "prefix", "account", "created", "last used"
                );
                for k in store.keys().await? {
                    println!(
                        "{:>5}  {:<12} {:<20} {:<10} {:<10} {}",
                        k.id,
                        k.prefix,
                        k.account,
                        when(Some(k.created_at)),
                        when(k.last_used_at),
                        when(k.revoked_at)
                    );
                }
            }
            KeysCommand::Revoke { key } => {
                let k = store.revoke_key(&key).await?;
                println!(
                    "revoked key #{} ({}) of account `{}`",
                    k.id, k.prefix, k.account
                );
            }
        }
        Ok(())
    })
}

pub fn accounts(command: AccountsCommand, db: DbArgs) -> anyhow::Result<()> {
    with_store(&db, async move |store| {
        let show = |a: &tokenfab_platform::store::Account| {
            println!(
                "{:<20} tier {:<10} balance {:>14} reserved {:>12} available {:>14}",
                a.name,
                a.tier,
                a.balance.to_string(),
                a.reserved.to_string(),
                a.available().to_string()
            );
        };
        match command {
            AccountsCommand::Create { name, tier } => {
                show(&store.create_account(&name, &tier).await?)
            }
            AccountsCommand::TopUp { name, add, note } => {
                let amount: Money = add.parse()?;
                show(&store.credit(&name, amount, &note).await?);
            }
            AccountsCommand::Show { name: Some(name) } => show(&store.account(&name).await?),
            AccountsCommand::Show { name: None } => {
                for a in store.accounts().await? {
                    show(&a);
                }
            }
        }
        Ok(())
    })
}

pub fn usage(args: UsageArgs) -> anyhow::Result<()> {
    let day = |s: &Option<String>, default: i64| -> anyhow::Result<i64> {
        match s {
            Some(s) => {
                days::parse(s).with_context(|| format!("`{s}` is not a date: use YYYY-MM-DD"))
            }
            None => Ok(default),
        }
    };
    let from = day(&args.from, unix_now().div_euclid(86_400))?;
    let to = day(&args.to, from)?;
    with_store(&args.db, async move |store| {
        println!(
            "usage {} .. {} (UTC days)",
            days::format(from),
            days::format(to)
        );
        println!(
            "{:<20} {:<40} {:>9} {:>12} {:>10} {:>10} {:>12} {:>14}",
            "account", "model", "requests", "prompt", "cached", "reasoning", "completion", "cost"
        );
        for u in store.usage(from, to).await? {
            println!(
                "{:<20} {:<40} {:>9} {:>12} {:>10} {:>10} {:>12} {:>14}",
                u.account,
                u.model,
                u.requests,
                u.prompt_tokens,
                u.cached_tokens,
                u.reasoning_tokens,
                u.completion_tokens,
                u.cost.to_string()
            );
        }
        Ok(())
    })
}
