//! A [`Changeset`] rendered: the statements that apply it (to a connection, or as SQL text for
//! the sqlite3 shell), its JSON for scripts, and one line per schema change for people. Rows
//! come from a [`RowSource`]: the changeset itself, or a diff that reads them as rendering goes
//! (`diff::Diff`), so one renderer serves both.

use rusqlite::Connection;

use super::{ordered_ddl, Changeset, DdlPhase, Phase, Pick, RowChange, SchemaChange, TableDiff};
use crate::sql;
use crate::value::Value;
use crate::{Error, Result};

/// Is shown each row change of a [`RowSource`] in turn.
pub(crate) type Each<'a> = dyn FnMut(&RowChange) -> Result<()> + 'a;

/// Where the row changes of a [`Changeset`]'s tables come from when it is rendered: held in
/// the changeset itself, or read from the databases as rendering goes ([`Diff`]). One renderer
/// serves both.
pub(crate) trait RowSource {
    /// Calls `each` with every change of table `i` (of [`Changeset::tables`]) that `pick`
    /// takes, in key order. `next` are the picks the caller asks for next, of this same table
    /// and in this order, so a source that reads the databases can put those changes aside
    /// for them rather than read the table again.
    fn changes(&self, i: usize, pick: Pick, next: &[Pick], each: &mut Each<'_>) -> Result<()>;
}

impl RowSource for Changeset {
    fn changes(&self, i: usize, pick: Pick, _: &[Pick], each: &mut Each<'_>) -> Result<()> {
        let t = &self.tables[i];
        t.changes
            .iter()
            .filter(|ch| pick.takes(t, ch))
            .try_for_each(each)
    }
}

pub type Emit<'a> = dyn FnMut(&str, &[Value]) -> Result<()> + 'a;

/// The statement texts of one table's rows, made once per table: rows of one shape share
/// their SQL text, so a caller can prepare each shape once.
struct RowSql {
    delete: String,
    insert: String,
    /// Update texts by the positions of the columns they set, made as each set first comes.
    updates: std::collections::HashMap<Vec<usize>, String>,
    /// The changed positions of the row at hand, kept to spare an allocation per row.
    changed: Vec<usize>,
}

impl TableDiff {
    fn row_sql(&self) -> RowSql {
        RowSql {
            delete: sql::delete(&self.table.name, &self.key_names()),
            insert: sql::insert(&self.table.name, &self.columns, 1),
            updates: std::collections::HashMap::new(),
            changed: Vec::new(),
        }
    }

    /// Emits what `ch` does in `phase` (a change [`Pick::Only`] of that phase takes): the
    /// delete of its old row, its update in place, or the insert of its new row.
    fn row_statement(
        &self,
        q: &mut RowSql,
        phase: Phase,
        ch: &RowChange,
        args: &mut Vec<Value>,
        emit: &mut Emit<'_>,
    ) -> Result<()> {
        match (phase, ch) {
            (Phase::Deletes, _) => {
                if let Some(old) = ch.old() {
                    args.clear();
                    args.extend(self.key.iter().map(|&k| old[k].clone()));
                    emit(&q.delete, args)?;
                }
            }
            (Phase::Updates, RowChange::Update { new, .. }) => {
                q.changed.clear();
                q.changed.extend(ch.changed_columns());
                // Rows that differ only in what no column shows (none today) update nothing:
                // `SET` with an empty list is not SQL.
                if q.changed.is_empty() {
                    return Ok(());
                }
                if !q.updates.contains_key(q.changed.as_slice()) {
                    let set: Vec<&str> = q
                        .changed
                        .iter()
                        .map(|&c| self.columns[c].as_str())
                        .collect();
                    let text = sql::update(&self.table.name, &set, &self.key_names());
                    q.updates.insert(q.changed.clone(), text);
                }
                args.clear();
                args.extend(q.changed.iter().chain(&self.key).map(|&c| new[c].clone()));
                emit(&q.updates[q.changed.as_slice()], args)?;
            }
            (Phase::Updates, _) => {}
            (Phase::Inserts, _) => emit(&q.insert, ch.row())?,
        }
        Ok(())
    }
}

impl Changeset {
    /// Emits the statements that turn a copy of the base into the working copy, in one
    /// transaction. Every trigger is dropped first and re-created last, so none fires while
    /// rows are applied; foreign keys are off, so order and cascades cannot interfere. Each
    /// table's rows go deletes, then updates, then inserts ([`TableDiff::phases`]), so a unique
    /// value that moved from a deleted row to a new one never collides.
    pub fn statements(&self, emit: &mut Emit<'_>) -> Result<()> {
        self.statements_from(self, emit)
    }

    /// [`Changeset::statements`] with the rows read from `rows`, a table and a phase at a
    /// time. Nothing at all is emitted when nothing changed, so the opening statements wait
    /// for the first row when the rest of the changeset is empty.
    fn statements_from(&self, rows: &dyn RowSource, emit: &mut Emit<'_>) -> Result<()> {
        let mut opened = false;
        if !self.schema.is_empty() || !self.sequences.is_empty() || self.user_version.is_some() {
            self.opening_statements(emit)?;
            opened = true;
        }
        let mut args = Vec::new();
        for (i, t) in self.tables.iter().enumerate() {
            let mut q = t.row_sql();
            let picks = Phase::ALL.map(Pick::Only);
            for (at, &pick) in picks.iter().enumerate() {
                let phase = Phase::ALL[at];
                rows.changes(i, pick, &picks[at + 1..], &mut |ch| {
                    if !opened {
                        self.opening_statements(emit)?;
                        opened = true;
                    }
                    t.row_statement(&mut q, phase, ch, &mut args, emit)
                })?;
            }
        }
        if opened {
            self.closing_statements(emit)?;
        }
        Ok(())
    }

    /// What goes before the rows: the transaction, dropped triggers and objects, table DDL.
    fn opening_statements(&self, emit: &mut Emit<'_>) -> Result<()> {
        let mut ddl = |q: &str| emit(q, &[]);
        ddl("PRAGMA foreign_keys=OFF")?;
        ddl("BEGIN TRANSACTION")?;
        for (name, _) in &self.base_triggers {
            ddl(&format!("DROP TRIGGER IF EXISTS {}", sql::ident(name)))?;
        }
        let mut fixes = Some(self.fixes_before_rebuilds(|_, _, _| true));
        for (phase, q) in ordered_ddl(&self.schema) {
            if phase == DdlPhase::Tables {
                for (fix, args) in fixes.take().into_iter().flatten() {
                    emit(&fix, &args)?;
                }
            }
            if phase < DdlPhase::CreateObjects {
                emit(&q, &[])?;
            }
        }
        Ok(())
    }

    /// What goes after the rows: counters, objects, triggers, `user_version`, COMMIT.
    fn closing_statements(&self, emit: &mut Emit<'_>) -> Result<()> {
        for q in &self.sequences {
            let name = Value::text(&q.table);
            emit(sql::SEQUENCE_DELETE, std::slice::from_ref(&name))?;
            if let Some(n) = q.new {
                emit(sql::SEQUENCE_INSERT, &[name, Value::Integer(n)])?;
            }
        }
        let mut ddl = |q: &str| emit(q, &[]);
        for (phase, q) in ordered_ddl(&self.schema) {
            if phase == DdlPhase::CreateObjects {
                ddl(&q)?;
            }
        }
        for (_, create) in &self.new_triggers {
            ddl(create)?;
        }
        if let Some(v) = self.user_version {
            ddl(&format!("PRAGMA user_version={v}"))?;
        }
        ddl("COMMIT")
    }

    /// SQL text that, run by the sqlite3 CLI on a copy of the base, yields the working copy.
    pub fn write_sql(&self, out: &mut dyn std::io::Write) -> Result<()> {
        self.write_sql_from(self, out)
    }

    pub(crate) fn write_sql_from(
        &self,
        rows: &dyn RowSource,
        out: &mut dyn std::io::Write,
    ) -> Result<()> {
        let mut line = String::new();
        self.statements_from(rows, &mut |q, args| {
            // Literals never hold a raw control character, so a CR LF pair in the line is one
            // in `q`: checking the statement is checking the line, without scanning the values.
            sql::check_shell_text(q)?;
            line.clear();
            sql::push_bound(&mut line, q, args);
            line.push_str(";\n");
            out.write_all(line.as_bytes())?;
            Ok(())
        })
    }

    /// Applies the changeset to `conn` (a copy of the base) with prepared statements: one
    /// parse per statement shape, however many rows.
    pub fn apply(&self, conn: &Connection) -> Result<()> {
        conn.set_prepared_statement_cache_capacity(256);
        self.statements(&mut |q, args| {
            conn.prepare_cached(q)?
                .execute(rusqlite::params_from_iter(args.iter()))?;
            Ok(())
        })
    }

    /// The changeset for scripts, as pretty-printed JSON and a newline: every value typed as in
    /// Hrana (`{"type":"integer","value":"1"}`), so storage classes survive.
    pub fn write_json(&self, out: &mut dyn std::io::Write) -> Result<()> {
        self.write_json_from(self, out)
    }

    /// [`Changeset::write_json`] with the rows read from `rows`: a first read of each table
    /// counts its changes (the counts and the total come before or beside the changes), a
    /// second one writes them as they come.
    pub(crate) fn write_json_from(
        &self,
        rows: &dyn RowSource,
        out: &mut dyn std::io::Write,
    ) -> Result<()> {
        let mut counts = Vec::with_capacity(self.tables.len());
        let last = self.tables.len().saturating_sub(1);
        for i in 0..self.tables.len() {
            let mut c = Counts::default();
            // Only the last table's changes are printed right after its count.
            let next: &[Pick] = if i == last { &[Pick::All] } else { &[] };
            rows.changes(i, Pick::All, next, &mut |ch| {
                c.add(ch);
                Ok(())
            })?;
            counts.push(c);
        }
        let doc = JsonDoc {
            cs: self,
            rows,
            counts,
            failed: std::cell::RefCell::new(None),
        };
        if let Err(e) = serde_json::to_writer_pretty(&mut *out, &doc) {
            return Err(doc
                .failed
                .take()
                .unwrap_or_else(|| std::io::Error::from(e).into()));
        }
        writeln!(out)?;
        Ok(())
    }
}

/// A table's changes counted by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    inserted: usize,
    updated: usize,
    deleted: usize,
}

impl Counts {
    pub(crate) fn add(&mut self, ch: &RowChange) {
        match ch {
            RowChange::Insert(_) => self.inserted += 1,
            RowChange::Update { .. } => self.updated += 1,
            RowChange::Delete(_) => self.deleted += 1,
        }
    }

    fn total(self) -> usize {
        self.inserted + self.updated + self.deleted
    }
}

/// `diff --json`, serialized by serde_json as the rows are read. Keys come in sorted order,
/// as serde_json's maps keep them:
///
/// ```text
/// {"changes": 2, "schema": [], "sequences": [], "tables": [{"changes": [{"key": [..],
///  "op": "insert", "row": {..}}, ..], "deleted": 0, "inserted": 2, "key": ["id"],
///  "table": "t", "updated": 0}], "user_version": null}
/// ```
struct JsonDoc<'a> {
    cs: &'a Changeset,
    rows: &'a dyn RowSource,
    counts: Vec<Counts>,
    /// The error a read met midway, which serde only sees as a message.
    failed: std::cell::RefCell<Option<Error>>,
}

/// The "changes" array of table `i`.
struct JsonChanges<'a>(&'a JsonDoc<'a>, usize);

/// The object of table `i`.
struct JsonTable<'a>(&'a JsonDoc<'a>, usize);

/// The "tables" array: the tables that changed.
struct JsonTables<'a>(&'a JsonDoc<'a>);

impl serde::Serialize for JsonDoc<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let cs = self.cs;
        let rows: usize = self.counts.iter().map(|c| c.total()).sum();
        let mut m = s.serialize_map(Some(5))?;
        m.serialize_entry(
            "changes",
            &(cs.listed_schema().count() + rows + usize::from(cs.user_version.is_some())),
        )?;
        m.serialize_entry(
            "schema",
            &cs.listed_schema()
                .map(SchemaChange::to_json)
                .collect::<Vec<_>>(),
        )?;
        m.serialize_entry(
            "sequences",
            &cs.sequences
                .iter()
                .map(|q| serde_json::json!({"table": q.table, "old": q.old, "new": q.new}))
                .collect::<Vec<_>>(),
        )?;
        m.serialize_entry("tables", &JsonTables(self))?;
        m.serialize_entry("user_version", &cs.user_version)?;
        m.end()
    }
}

impl serde::Serialize for JsonTables<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(None)?;
        for (i, c) in self.0.counts.iter().enumerate() {
            if c.total() > 0 {
                seq.serialize_element(&JsonTable(self.0, i))?;
            }
        }
        seq.end()
    }
}

impl serde::Serialize for JsonTable<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let (t, c) = (&self.0.cs.tables[self.1], self.0.counts[self.1]);
        let mut m = s.serialize_map(Some(6))?;
        m.serialize_entry("changes", &JsonChanges(self.0, self.1))?;
        m.serialize_entry("deleted", &c.deleted)?;
        m.serialize_entry("inserted", &c.inserted)?;
        m.serialize_entry(
            "key",
            &t.key.iter().map(|&k| &t.columns[k]).collect::<Vec<_>>(),
        )?;
        m.serialize_entry("table", &t.table.name)?;
        m.serialize_entry("updated", &c.updated)?;
        m.end()
    }
}

impl serde::Serialize for JsonChanges<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::{Error as _, SerializeSeq};
        let t = &self.0.cs.tables[self.1];
        let mut seq = s.serialize_seq(None)?;
        let mut written = None;
        let read = self.0.rows.changes(self.1, Pick::All, &[], &mut |ch| {
            seq.serialize_element(&t.change_json(ch)).map_err(|e| {
                written = Some(e);
                Error::Unexpected("the JSON output failed".into())
            })
        });
        if let Some(e) = written {
            return Err(e);
        }
        if let Err(e) = read {
            let message = e.to_string();
            *self.0.failed.borrow_mut() = Some(e);
            return Err(S::Error::custom(message));
        }
        seq.end()
    }
}

impl TableDiff {
    /// One row change for `diff --json`.
    fn change_json(&self, ch: &RowChange) -> serde_json::Value {
        use serde_json::json;
        let obj = |row: &[Value], which: &mut dyn Iterator<Item = usize>| {
            let mut m = serde_json::Map::new();
            for i in which {
                m.insert(self.columns[i].clone(), json!(row[i]));
            }
            serde_json::Value::Object(m)
        };
        let key: Vec<&Value> = self.key_of(ch.row());
        match ch {
            RowChange::Insert(r) => {
                json!({"op": "insert", "key": key, "row": obj(r, &mut (0..r.len()))})
            }
            RowChange::Delete(r) => {
                json!({"op": "delete", "key": key, "old": obj(r, &mut (0..r.len()))})
            }
            RowChange::Update { old, new } => {
                let mut set = serde_json::Map::new();
                for c in ch.changed_columns() {
                    set.insert(
                        self.columns[c].clone(),
                        json!({"old": old[c], "new": new[c]}),
                    );
                }
                json!({"op": "update", "key": key, "set": set})
            }
        }
    }
}

impl SchemaChange {
    /// One schema change for `diff --json`, and in the reports of `push --json` and
    /// `pull --json`.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            SchemaChange::TableAdded { name, sql } => {
                json!({"change": "table_added", "name": name, "sql": sql})
            }
            SchemaChange::TableDropped { name, sql } => {
                json!({"change": "table_dropped", "name": name, "sql": sql})
            }
            SchemaChange::ColumnsAdded { table, columns, .. } => {
                json!({"change": "columns_added", "name": table, "columns": columns})
            }
            SchemaChange::TableRebuilt {
                name,
                old_name,
                old_sql,
                new_sql,
                kind,
                ..
            } => {
                json!({"change": "table_changed", "kind": kind, "name": name, "old_name": old_name, "old_sql": old_sql, "new_sql": new_sql})
            }
            SchemaChange::ObjectAdded { kind, name, sql } => {
                json!({"change": format!("{}_added", kind.as_str()), "name": name, "sql": sql})
            }
            SchemaChange::ObjectDropped { kind, name, sql } => {
                json!({"change": format!("{}_dropped", kind.as_str()), "name": name, "sql": sql})
            }
            SchemaChange::ObjectChanged {
                kind,
                name,
                old_sql,
                new_sql,
            } => {
                json!({"change": format!("{}_changed", kind.as_str()), "name": name, "old_sql": old_sql, "new_sql": new_sql})
            }
        }
    }
}

impl Changeset {
    /// For a person: per table, rows inserted, updated and deleted; then schema changes,
    /// counters and `user_version`; then how many changes wait to be pushed. In ANSI colors
    /// when `color`.
    pub fn write_summary(&self, out: &mut dyn std::io::Write, color: bool) -> std::io::Result<()> {
        let counts: Vec<Counts> = self
            .tables
            .iter()
            .map(|t| {
                let mut c = Counts::default();
                t.changes.iter().for_each(|ch| c.add(ch));
                c
            })
            .collect();
        self.write_summary_counted(&counts, out, color)
    }

    /// [`Changeset::write_summary`] with each table's changes counted in `counts` (by table,
    /// as [`Changeset::tables`]), so a diff can count its rows as it reads them instead of
    /// holding them.
    pub(crate) fn write_summary_counted(
        &self,
        counts: &[Counts],
        out: &mut dyn std::io::Write,
        color: bool,
    ) -> std::io::Result<()> {
        let paint = |code: &str, text: String| {
            if color {
                format!("\x1b[{code}m{text}\x1b[0m")
            } else {
                text
            }
        };
        let changed: Vec<_> = self
            .tables
            .iter()
            .zip(counts)
            .filter(|(_, c)| c.total() > 0)
            .collect();
        if !changed.is_empty() {
            let width = changed
                .iter()
                .map(|(t, _)| t.table.name.chars().count())
                .max()
                .unwrap_or(5)
                .max(5);
            writeln!(
                out,
                "{:width$}  {:>9} {:>9} {:>9}",
                "table", "inserted", "updated", "deleted"
            )?;
            for (t, c) in &changed {
                let (i, u, d) = (c.inserted, c.updated, c.deleted);
                writeln!(
                    out,
                    "{:width$}  {} {} {}",
                    t.table.name,
                    paint("32", format!("{:>9}", format!("+{i}"))),
                    paint("33", format!("{:>9}", format!("~{u}"))),
                    paint("31", format!("{:>9}", format!("-{d}")))
                )?;
            }
        }
        if self.listed_schema().next().is_some() {
            writeln!(out, "schema:")?;
            for c in self.listed_schema() {
                let line = c.describe();
                let code = match line.chars().next() {
                    Some('+') => "32",
                    Some('-') => "31",
                    _ => "33",
                };
                writeln!(out, "  {}", paint(code, line))?;
            }
        }
        for q in &self.sequences {
            let show = |v: Option<i64>| v.map_or_else(|| "none".to_owned(), |n| n.to_string());
            writeln!(
                out,
                "autoincrement counter of {}: {} -> {}",
                q.table,
                show(q.old),
                show(q.new)
            )?;
        }
        if let Some(v) = self.user_version {
            writeln!(out, "user_version -> {v}")?;
        }
        // `counts` may be of rows this changeset does not hold; with no change at all, its
        // tables hold none either.
        match self.change_count_with(counts.iter().map(|c| c.total()).sum()) {
            0 if self.is_empty() => writeln!(out, "nothing to push"),
            n => writeln!(out, "{n} change{} to push", if n == 1 { "" } else { "s" }),
        }
    }
}

impl SchemaChange {
    /// One line for people: `+ table foo`, `~ index bar`.
    pub fn describe(&self) -> String {
        match self {
            SchemaChange::TableAdded { name, .. } => format!("+ table {name}"),
            SchemaChange::TableDropped { name, .. } => format!("- table {name}"),
            SchemaChange::ColumnsAdded { table, columns, .. } => {
                format!("~ table {table}: added {}", columns.join(", "))
            }
            SchemaChange::TableRebuilt { name, old_name, .. } if old_name != name => {
                format!("~ table {old_name}: renamed to {name}")
            }
            SchemaChange::TableRebuilt { name, kind, .. } => {
                format!("~ table {name}: {}", kind.replace('_', " "))
            }
            SchemaChange::ObjectAdded { kind, name, .. } => format!("+ {} {name}", kind.as_str()),
            SchemaChange::ObjectDropped { kind, name, .. } => format!("- {} {name}", kind.as_str()),
            SchemaChange::ObjectChanged { kind, name, .. } => format!("~ {} {name}", kind.as_str()),
        }
    }
}
