//! `keel users`: the people of a database and their roles. A person's token is printed once,
//! when they are added, and stored only as its hash; it signs them in on every server of the
//! database at once, and stops working as soon as they are removed.

use clap::{Args, Subcommand};
use keel_protocol::Role;
use keel_server::storage::users::Directory;

#[derive(Args)]
pub struct UsersArgs {
    /// The database, as for `keel serve` (a server may be running on it).
    #[arg(long, env = "KEEL_DB", default_value = "keel.db", global = true)]
    db: keel_server::storage::Location,
    #[command(subcommand)]
    command: UsersCmd,
}

#[derive(Subcommand)]
enum UsersCmd {
    /// Add a person and print their token (shown this once).
    Add {
        name: String,
        /// viewer (sees), operator (also steers runs) or admin (also launches grids).
        #[arg(long, value_parser = role)]
        role: Role,
    },
    /// List the people and their roles.
    List,
    /// Change a person's role (their token stays).
    Role {
        name: String,
        #[arg(value_parser = role)]
        role: Role,
    },
    /// Remove a person: their token stops working at once.
    Remove { name: String },
}

fn role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("`{s}` is not a role: viewer, operator or admin"))
}

pub async fn run(args: UsersArgs) -> anyhow::Result<()> {
    let people = Directory::open(&args.db).await?;
    let result = act(&people, args.command).await;
    people.close().await;
    result
}

async fn act(people: &Directory, command: UsersCmd) -> anyhow::Result<()> {
    match command {
        UsersCmd::Add { name, role } => {
            let token = people.add(&name, role).await?;
            eprintln!("added {name} as {role}. Their token, shown this once (keep it secret):");
            println!("{token}");
        }
        UsersCmd::List => {
            let list = people.list().await?;
            if list.is_empty() {
                eprintln!("nobody yet: keel users add NAME --role viewer|operator|admin");
            }
            for u in list {
                println!("{:<24} {:<9} added {}", u.name, u.role, when(u.created_at));
            }
        }
        UsersCmd::Role { name, role } => {
            anyhow::ensure!(
                people.set_role(&name, role).await?,
                "nobody is called `{name}`"
            );
            eprintln!("{name} is now {role}");
        }
        UsersCmd::Remove { name } => {
            anyhow::ensure!(people.remove(&name).await?, "nobody is called `{name}`");
            eprintln!("removed {name}: their token no longer works");
        }
    }
    Ok(())
}

/// Unix seconds as `YYYY-MM-DD HH:MM UTC`.
fn when(t: f64) -> String {
    let secs = t as i64;
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_read_as_dates() {
        assert_eq!(super::when(0.0), "1970-01-01 00:00 UTC");
        assert_eq!(super::when(1_796_164_279.0), "2026-12-01 22:31 UTC");
    }
}
