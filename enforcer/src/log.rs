//! The enforcer's own messages on stderr, through `tracing`: one line each,
//! `enforcer: warning: ...` (errors and warnings name their level, notices
//! do not), without a timestamp (journald adds one under systemd).
//! `ENFORCER_LOG` sets the level (`error`, `warn`, `info`: the default,
//! `debug`, `trace`); `ENFORCER_DEBUG_LOAD` implies `debug`, where load and
//! publish timings go. Policy diagnostics (`file:line:col: error: ...`) and
//! command output are not log lines and do not come through here.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    filter::LevelFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// Installs the stderr logger (once, at startup).
pub fn init() {
    let level = if crate::bpf::debug_load() { Some(LevelFilter::DEBUG) } else { None };
    let from_env = std::env::var("ENFORCER_LOG").ok().and_then(|text| text.parse::<LevelFilter>().ok());
    let level = level.max(from_env).unwrap_or(LevelFilter::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .event_format(Line)
        .init();
}

/// `enforcer: <level>: <message> <field=value ...>`.
struct Line;

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let level = match *event.metadata().level() {
            Level::ERROR => "error: ",
            Level::WARN => "warning: ",
            Level::INFO => "",
            Level::DEBUG => "debug: ",
            Level::TRACE => "trace: ",
        };
        write!(writer, "enforcer: {level}")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
