//! Which of squawk's rules bluegreen applies, and where: a rule about locks
//! (live traffic queues or stalls) holds in every file, expand and contract
//! alike; a rule about compatibility (the running version breaks) holds in
//! expand files only, because a contract file runs once nothing old is
//! left. Style rules are off: they judge taste, not safety.

use squawk_linter::Rule;

/// What a rule protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Live traffic: the statement takes a lock that stalls requests.
    Lock,
    /// The running (old) version: it would fail against the new schema.
    Compat,
    /// Not applied (style, or covered by our own check), with the reason.
    Off(&'static str),
}

/// The class of one squawk rule.
pub fn class(rule: Rule) -> Class {
    use Rule::*;
    match rule {
        RequireConcurrentIndexCreation
        | RequireConcurrentIndexDeletion
        | ConstraintMissingNotValid
        | AddingFieldWithDefault
        | AddingForeignKeyConstraint
        | ChangingColumnType
        | AddingNotNullableField
        | AddingSerialPrimaryKeyField
        | DisallowedUniqueConstraint
        | BanDropDatabase
        | BanConcurrentIndexCreationInTransaction
        | BanCreateDomainWithConstraint
        | BanAlterDomainWithAddConstraint
        | BanTruncateCascade
        | RequireConcurrentPartitionDetach
        | RequireConcurrentReindex
        | PreferRepack => Class::Lock,
        RenamingColumn
        | RenamingTable
        | RenamingObject
        | BanDropColumn
        | BanDropTable
        | AddingRequiredField
        | BanDropView
        | BanDropFunction
        | BanDropType
        | BanDropDefault
        | BanDropTrigger
        | BanDropSchema
        | BanDropSequence
        | BanDropDomain
        | BanDropConstraint
        | BanDropGeneratedExpression
        | BanAlterGeneratedExpression
        | BanSetSchema
        | BanAlterIdentity
        | BanDropExtension
        | BanDisableTrigger
        | BanDropPolicy
        | BanRevoke
        | BanReplaceViewFunction
        | BanDetachInheritance => Class::Compat,
        TransactionNesting | BanUncommittedTransaction => {
            Class::Off("bluegreen's own transaction-control check refuses these, in the deploy's words")
        }
        RequireTimeoutSettings | RequireLockTimeout | RequireStatementTimeout => {
            Class::Off("bluegreen sets lock_timeout and statement_timeout on every statement itself")
        }
        BanDropNotNull => Class::Off(
            "dropping NOT NULL is how an expand lets the new version stop writing a column; the old version still fills it",
        ),
        BanDropIndex => Class::Off("dropping an index breaks no query of the running version"),
        BanNewWriteRestriction | BanAddEnumValue | BanAddCompositeAttribute | BanAddColumn
        | BanAlterSequenceValues => Class::Off(
            "additive: what the running version cannot live with is caught by its smoke tests on the expanded schema",
        ),
        _ => Class::Off("style or permissions, not a lock or the running version's compatibility"),
    }
}

/// The rules squawk runs for us: every rule that is not off.
pub fn enabled() -> Vec<Rule> {
    enum_all()
        .filter(|r| !matches!(class(*r), Class::Off(_)))
        .collect()
}

/// Every squawk rule.
pub fn enum_all() -> impl Iterator<Item = Rule> {
    // squawk keeps the list in its `FromStr`; the names are stable (its
    // config files use them).
    ALL.iter().filter_map(|n| n.parse().ok())
}

/// Whom a finding of this class hurts, as the first words of its "why".
pub fn who(class: Class) -> &'static str {
    match class {
        Class::Lock => "live traffic stalls",
        Class::Compat => "the running version breaks",
        Class::Off(_) => "",
    }
}

/// The expand/contract way for a compatibility rule (squawk's help is
/// about one migration; ours is about two versions sharing a database).
pub fn instead(rule: Rule) -> Option<&'static str> {
    use Rule::*;
    Some(match rule {
        BanDropColumn => "stop using the column in the new version; drop it in a contract file (NNNN_name.contract.sql), which runs once rollback is no longer possible",
        RenamingColumn => "add the new column, have the new version write both and read the new one (backfill it), and drop the old one in a contract file",
        RenamingTable | RenamingObject | BanSetSchema => "create the new name beside the old (a view of the old table under the new name, say), move the new version to it, and drop the old name in a contract file",
        ChangingColumnType => "add a column of the new type, write both and backfill in batches, switch reads in the new version, and drop the old column in a contract file",
        AddingRequiredField => "add the column with a DEFAULT (or nullable), and make it NOT NULL without a default in a contract file",
        AddingNotNullableField => "add CHECK (column IS NOT NULL) NOT VALID, VALIDATE CONSTRAINT it in a later file (it takes no lock that stops writes), then SET NOT NULL (PostgreSQL 12+ uses the validated check and skips the scan)",
        BanDropDefault => "keep the default while the old version can run; drop it in a contract file",
        _ => return None,
    })
}

/// What running the safe form under bluegreen takes, after squawk's help.
pub fn note(rule: Rule) -> &'static str {
    match rule {
        Rule::RequireConcurrentIndexCreation
        | Rule::RequireConcurrentIndexDeletion
        | Rule::RequireConcurrentReindex
        | Rule::RequireConcurrentPartitionDetach => {
            "; CONCURRENTLY cannot run in a transaction, so put the statement in a file of its own (with IF [NOT] EXISTS, so a retry after a failure can run it again)"
        }
        _ => "",
    }
}

/// squawk 2.68's rule names (from its docs and `Rule`'s `FromStr`).
const ALL: &[&str] = &[
    "require-concurrent-index-creation",
    "require-concurrent-index-deletion",
    "constraint-missing-not-valid",
    "adding-field-with-default",
    "adding-foreign-key-constraint",
    "changing-column-type",
    "adding-not-nullable-field",
    "adding-serial-primary-key-field",
    "renaming-column",
    "renaming-table",
    "disallowed-unique-constraint",
    "ban-drop-database",
    "prefer-bigint-over-int",
    "prefer-bigint-over-smallint",
    "prefer-identity",
    "prefer-repack",
    "prefer-robust-stmts",
    "prefer-text-field",
    "prefer-timestamptz",
    "ban-char-field",
    "ban-drop-column",
    "ban-drop-table",
    "ban-drop-not-null",
    "transaction-nesting",
    "adding-required-field",
    "ban-concurrent-index-creation-in-transaction",
    "ban-create-domain-with-constraint",
    "ban-alter-domain-with-add-constraint",
    "ban-truncate-cascade",
    "require-timeout-settings",
    "ban-uncommitted-transaction",
    "require-enum-value-ordering",
    "require-table-schema",
    "identifier-too-long",
    "require-concurrent-partition-detach",
    "require-concurrent-reindex",
    "require-lock-timeout",
    "require-statement-timeout",
    "ban-duplicate-column-assignments",
    "ban-drop-view",
    "ban-drop-function",
    "ban-drop-type",
    "ban-drop-default",
    "ban-drop-trigger",
    "ban-drop-schema",
    "ban-drop-sequence",
    "ban-drop-domain",
    "ban-drop-constraint",
    "ban-drop-generated-expression",
    "renaming-object",
    "ban-set-schema",
    "ban-alter-identity",
    "ban-drop-extension",
    "ban-alter-generated-expression",
    "ban-drop-index",
    "ban-set-default",
    "ban-disable-trigger",
    "ban-replica-identity",
    "ban-drop-policy",
    "ban-revoke",
    "ban-replace-view-function",
    "ban-alter-policy-condition",
    "ban-alter-policy-roles",
    "ban-create-policy",
    "ban-alter-function-options",
    "ban-alter-view-options",
    "ban-alter-role-options",
    "ban-alter-database-options",
    "ban-alter-row-level-security",
    "ban-new-write-restriction",
    "ban-add-enum-value",
    "ban-add-composite-attribute",
    "ban-add-column",
    "ban-detach-inheritance",
    "ban-alter-sequence-values",
    "ban-alter-system-options",
    "ban-alter-extension",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_squawk_rule_is_known_and_the_safety_ones_are_on() {
        assert_eq!(enum_all().count(), ALL.len(), "a name squawk does not know");
        let on = enabled();
        for r in [
            Rule::RequireConcurrentIndexCreation,
            Rule::ConstraintMissingNotValid,
            Rule::AddingFieldWithDefault,
            Rule::BanDropFunction,
            Rule::BanDropTrigger,
            Rule::BanDisableTrigger,
        ] {
            assert!(on.contains(&r), "{r}");
        }
        assert!(!on.contains(&Rule::PreferBigintOverInt));
        assert!(!on.contains(&Rule::TransactionNesting));
    }
}
