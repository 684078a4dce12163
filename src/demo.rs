//! `serve --demo`: plausible activity for one tenant, so the dashboard moves within
//! seconds of opening it. Tickets are opened, worked on, reviewed and closed; agents
//! heartbeat, change status and now and then go quiet long enough to be marked stale;
//! profiles are edited; and, where the database has `changecast.publish()`, application
//! events are published.
//!
//! It is an ordinary writer with a connection of its own (`changecast:demo`): it writes
//! the example tables and knows nothing of the journal or of subscribers.

use std::time::Duration;

use anyhow::Context as _;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

/// Time between two demo actions.
pub const STEP: Duration = Duration::from_millis(700);
/// Longest wait between reconnection attempts after the database went away.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Closed tickets kept on the board; older ones are deleted.
const CLOSED_KEPT: i64 = 5;
/// Open tickets up to which new ones are filed.
const OPEN_WANTED: i64 = 5;

const TITLES: &[&str] = &[
    "Login page times out on slow networks",
    "Export to CSV drops the last row",
    "Dark mode: unreadable chart labels",
    "Webhook retries hammer the partner API",
    "Invoice PDF shows the wrong VAT rate",
    "Search ignores accented characters",
    "Mobile menu overlaps the logo",
    "Nightly backup job fails on Sundays",
    "Password reset mail lands in spam",
    "Dashboard loads every widget twice",
    "Upgrade the TLS certificates before expiry",
    "Rate limiter counts OPTIONS requests",
    "Onboarding checklist skips step 3",
    "Timezone shift in the weekly report",
];
const PROJECTS: &[&str] = &["web", "billing", "mobile", "infra"];
const PEOPLE: &[&str] = &["ana", "bo", "chen", "dara", "eli"];
const AGENTS: &[&str] = &["ingest-1", "ingest-2", "scorer", "mailer", "indexer"];
const AGENT_STATUSES: &[&str] = &["idle", "busy", "busy", "idle", "offline"];
const PROFILES: &[(&str, &str)] = &[
    ("Default routing", "routing"),
    ("EU customers", "region"),
    ("Night shift", "schedule"),
    ("VIP escalation", "priority"),
];
const TAGS: &[&str] = &[
    "routing", "region", "schedule", "priority", "beta", "legacy",
];

/// Runs until `shutdown`, reconnecting with backoff when the database goes away.
pub async fn run(
    pg: tokio_postgres::Config,
    tenant: String,
    step: Duration,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
    while !shutdown.is_cancelled() {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = session(&pg, &tenant, step, &shutdown) => result,
        };
        if let Err(error) = result {
            tracing::warn!(error = format!("{error:#}"), "demo writer: retrying");
        }
        if backoff.wait(&shutdown).await {
            return;
        }
    }
}

async fn session(
    pg: &tokio_postgres::Config,
    tenant: &str,
    step: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let (client, connection) = pg
        .connect(tokio_postgres::NoTls)
        .await
        .context("demo writer: connecting")?;
    let connection = tokio::spawn(connection);
    let mut demo = Demo::new(client, tenant).await?;
    demo.seed().await?;
    tracing::info!(tenant, publish = demo.can_publish, "demo writer started");
    let mut tick = tokio::time::interval(step);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = tick.tick() => {}
        }
        if let Err(error) = demo.step().await {
            break Err(error);
        }
    };
    drop(demo);
    connection.abort();
    result
}

/// One demo tenant's writer.
pub struct Demo {
    client: Client,
    tenant: String,
    /// Whether `changecast.publish(text, text, jsonb)` exists in this database.
    can_publish: bool,
    rng: Rng,
    steps: u64,
}

impl Demo {
    pub async fn new(client: Client, tenant: &str) -> anyhow::Result<Demo> {
        let can_publish: bool = client
            .query_one(
                "select to_regprocedure('changecast.publish(text,text,jsonb)') is not null",
                &[],
            )
            .await?
            .get(0);
        Ok(Demo {
            client,
            tenant: tenant.to_owned(),
            can_publish,
            rng: Rng::seeded(),
            steps: 0,
        })
    }

    /// Fills an empty tenant with a board, agents and profiles.
    pub async fn seed(&mut self) -> anyhow::Result<()> {
        let tenant = self.tenant.as_str();
        let tickets: i64 = self
            .client
            .query_one(
                "select count(*) from public.tickets where tenant_id = $1",
                &[&tenant],
            )
            .await?
            .get(0);
        if tickets == 0 {
            let states = ["open", "open", "in_progress", "review", "closed", "open"];
            for (i, state) in states.iter().enumerate() {
                let assignee = (*state != "open").then(|| PEOPLE[i % PEOPLE.len()]);
                self.client
                    .execute(
                        "insert into public.tickets (tenant_id, project_id, title, state, assignee, updated_at)
                         values ($1, $2, $3, $4, $5, now() - make_interval(mins => $6))",
                        &[&tenant, &PROJECTS[i % PROJECTS.len()], &TITLES[i], state, &assignee, &(i as i32 * 7)],
                    )
                    .await?;
            }
        }
        let agents: i64 = self
            .client
            .query_one(
                "select count(*) from public.agents where tenant_id = $1",
                &[&tenant],
            )
            .await?
            .get(0);
        if agents == 0 {
            for (i, name) in AGENTS.iter().enumerate() {
                self.client
                    .execute(
                        "insert into public.agents (tenant_id, name, status, last_heartbeat, updated_at)
                         values ($1, $2, $3, now() - make_interval(secs => $4), now())",
                        &[&tenant, name, &AGENT_STATUSES[i % 2], &(i as f64 * 2.0)],
                    )
                    .await?;
            }
        }
        let profiles: i64 = self
            .client
            .query_one(
                "select count(*) from public.profiles where tenant_id = $1",
                &[&tenant],
            )
            .await?
            .get(0);
        if profiles == 0 {
            for (i, (name, tag)) in PROFILES.iter().enumerate() {
                let config = serde_json::json!({ "max_parallel": 2 + i, "notify": i % 2 == 0 });
                self.client
                    .execute(
                        "insert into public.profiles (tenant_id, name, tag, is_default, active_for_consumption, config)
                         values ($1, $2, $3, $4, $5, $6)",
                        &[&tenant, name, tag, &(i == 0), &(i != 2), &config],
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// One action: every step some agents heartbeat, and one thing else happens.
    pub async fn step(&mut self) -> anyhow::Result<()> {
        self.steps += 1;
        self.heartbeats().await?;
        match self.rng.below(100) {
            0..=37 => self.advance_ticket().await,
            38..=57 => self.file_ticket().await,
            58..=72 => self.agent_status().await,
            73..=87 => self.edit_profile().await,
            _ => self.publish_progress().await,
        }
    }

    /// Agents beat every few seconds; the last one goes quiet for a while now and then,
    /// long enough for the dashboard to mark it stale.
    async fn heartbeats(&mut self) -> anyhow::Result<()> {
        // Out of every 90 steps, the quiet agent is silent for 60 (about 40 s).
        let quiet = self.steps % 90 >= 30;
        let offset = self.steps % 4;
        self.client
            .execute(
                "update public.agents set last_heartbeat = now()
                 where tenant_id = $1 and status <> 'offline'
                   and (not $3 or name <> $4)
                   and id in (select id from public.agents where tenant_id = $1
                              order by name offset $2 limit 2)",
                &[
                    &self.tenant,
                    &(offset as i64),
                    &quiet,
                    &AGENTS[AGENTS.len() - 1],
                ],
            )
            .await?;
        Ok(())
    }

    async fn advance_ticket(&mut self) -> anyhow::Result<()> {
        if self.open_tickets().await? < 2 {
            // Keep work coming in: an empty first column looks like a dead demo.
            return self.file_ticket().await;
        }
        let assignee = self.rng.pick(PEOPLE);
        let blocked = self.rng.below(10) == 0;
        self.client
            .execute(
                "update public.tickets set
                   state = case
                     when state = 'open' then 'in_progress'
                     when state = 'in_progress' and $3 then 'blocked'
                     when state = 'in_progress' then 'review'
                     when state = 'blocked' then 'in_progress'
                     else 'closed' end,
                   assignee = coalesce(assignee, $2),
                   updated_at = now()
                 where id = (select id from public.tickets
                             where tenant_id = $1 and state <> 'closed'
                             order by random() limit 1)",
                &[&self.tenant, &assignee, &blocked],
            )
            .await?;
        // Keep the closed column short.
        self.client
            .execute(
                "delete from public.tickets where id in (
                   select id from public.tickets where tenant_id = $1 and state = 'closed'
                   order by updated_at desc nulls last offset $2)",
                &[&self.tenant, &CLOSED_KEPT],
            )
            .await?;
        Ok(())
    }

    async fn open_tickets(&self) -> anyhow::Result<i64> {
        let row = self
            .client
            .query_one(
                "select count(*) from public.tickets where tenant_id = $1 and state = 'open'",
                &[&self.tenant],
            )
            .await?;
        Ok(row.get(0))
    }

    async fn file_ticket(&mut self) -> anyhow::Result<()> {
        if self.open_tickets().await? >= OPEN_WANTED {
            return Ok(());
        }
        let project = self.rng.pick(PROJECTS);
        let body = format!(
            "Reported by {} via the support portal.",
            self.rng.pick(PEOPLE)
        );
        let titles: Vec<&str> = TITLES.to_vec();
        // A title not on the board yet, if any is left.
        self.client
            .execute(
                "insert into public.tickets (tenant_id, project_id, title, body, updated_at)
                 select $1, $2, title, $4, now()
                 from unnest($3::text[]) as title
                 order by title in (select t.title from public.tickets t where t.tenant_id = $1), random()
                 limit 1",
                &[&self.tenant, &project, &titles, &body],
            )
            .await?;
        Ok(())
    }

    async fn agent_status(&mut self) -> anyhow::Result<()> {
        let status = self.rng.pick(AGENT_STATUSES);
        self.client
            .execute(
                "update public.agents set status = $2, updated_at = now(),
                   last_heartbeat = case when $2 = 'offline' then last_heartbeat else now() end
                 where id = (select id from public.agents where tenant_id = $1 and status <> $2
                             order by random() limit 1)",
                &[&self.tenant, &status],
            )
            .await?;
        Ok(())
    }

    async fn edit_profile(&mut self) -> anyhow::Result<()> {
        match self.rng.below(3) {
            0 => {
                let tag = self.rng.pick(TAGS);
                self.client
                    .execute(
                        "update public.profiles set tag = $2, updated_at = now()
                         where id = (select id from public.profiles where tenant_id = $1
                                     order by random() limit 1)",
                        &[&self.tenant, &tag],
                    )
                    .await?;
            }
            1 => {
                self.client
                    .execute(
                        "update public.profiles set active_for_consumption = not active_for_consumption,
                           config = config || jsonb_build_object('revision', coalesce((config->>'revision')::int, 0) + 1),
                           updated_at = now()
                         where id = (select id from public.profiles where tenant_id = $1
                                     order by random() limit 1)",
                        &[&self.tenant],
                    )
                    .await?;
            }
            _ => self.set_default_profile().await?,
        }
        Ok(())
    }

    /// Moves the default to another profile in one transaction, and says so with an
    /// application event (as the apps we serve do with `config_update`).
    async fn set_default_profile(&mut self) -> anyhow::Result<()> {
        let tx = self.client.transaction().await?;
        let chosen: Option<String> = tx
            .query_opt(
                "select id::text from public.profiles where tenant_id = $1 and not is_default
                 order by random() limit 1",
                &[&self.tenant],
            )
            .await?
            .map(|row| row.get(0));
        let Some(chosen) = chosen else {
            return Ok(());
        };
        tx.execute(
            "update public.profiles set is_default = (id::text = $2), updated_at = now()
             where tenant_id = $1 and (is_default or id::text = $2)",
            &[&self.tenant, &chosen],
        )
        .await?;
        if self.can_publish {
            let payload =
                serde_json::json!({ "action": "profile_set_default", "profile_ids": [chosen] });
            tx.execute(
                "select changecast.publish($1, 'config_update', $2)",
                &[&self.tenant, &payload],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn publish_progress(&mut self) -> anyhow::Result<()> {
        if !self.can_publish {
            return self.advance_ticket().await;
        }
        let (topic, payload) = if self.rng.below(2) == 0 {
            let agent = self.rng.pick(AGENTS);
            let done = self.rng.below(500);
            (
                "agent:stats",
                serde_json::json!({ "agent": agent, "tasks_done": done }),
            )
        } else {
            let percent = 10 * (1 + self.rng.below(9));
            (
                "ticket:progress",
                serde_json::json!({ "title": self.rng.pick(TITLES), "percent": percent }),
            )
        };
        self.client
            .execute(
                "select changecast.publish($1, $2, $3)",
                &[&self.tenant, &topic, &payload],
            )
            .await?;
        Ok(())
    }
}

/// xorshift64*: enough to vary a demo, seeded from the OS.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let mut seed = [0u8; 8];
        // Any seed will do; a fixed one if the OS cannot give one.
        let _ = getrandom::fill(&mut seed);
        Rng(u64::from_le_bytes(seed) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_stays_in_range_and_varies() {
        let mut rng = Rng(42);
        let picks: std::collections::HashSet<_> = (0..200).map(|_| rng.pick(PEOPLE)).collect();
        assert_eq!(picks.len(), PEOPLE.len());
        assert!((0..1000).all(|_| rng.below(7) < 7));
    }
}
