//! Numbers keep every digit from the source row to typed history, time travel, diffs and
//! revert: NUMERIC values that an `f64` cannot hold, read as `BigDecimal` (Diesel),
//! `rust_decimal::Decimal` (SeaORM), `i128` and `String`.

use std::str::FromStr;

use bemi::diesel::{PgConnection, apply_revert, plan_revert};
use bemi::revert::{Conflict, Revert, StepOutcome};
use bemi::{Context, enter_context};
use bemi_testing::audited_database;
use bigdecimal::BigDecimal;
use chrono::Duration;
use diesel::prelude::*;

mod schema {
    diesel::table! {
        ledger (id) {
            id -> Int4,
            amount -> Numeric,
            big -> Numeric,
            ratio -> Float8,
        }
    }
}

use schema::ledger;

const SCHEMA: &str = "CREATE TABLE ledger (
    id int PRIMARY KEY, amount numeric NOT NULL, big numeric NOT NULL, ratio float8 NOT NULL);";

/// Three amounts an `f64` reads as the same number (0.1).
const AMOUNT: [&str; 3] = [
    "0.1000000000000000055511151231257827",
    "0.1000000000000000055511151231257828",
    "0.1000000000000000055511151231257829",
];
const BIG: &str = "123456789012345678901234567890";

#[derive(Queryable, Selectable, Debug, PartialEq, Clone, bemi::Audited)]
#[diesel(table_name = ledger)]
struct Entry {
    id: i32,
    amount: BigDecimal,
    big: BigDecimal,
    ratio: f64,
}

/// The same table read into other types that hold the values.
#[derive(Debug, PartialEq, bemi::Audited)]
#[bemi(table = "ledger", key(id))]
struct EntryDigits {
    id: i32,
    amount: String,
    big: i128,
}

fn decimal(text: &str) -> BigDecimal {
    BigDecimal::from_str(text).unwrap()
}

fn stored_amount(db: &bemi_testing::AuditedDatabase) -> Vec<String> {
    db.query_texts("SELECT amount::text || ' ' || big::text FROM ledger ORDER BY id")
}

#[test]
fn numbers_beyond_f64_keep_every_digit_in_history_time_travel_and_revert() {
    use bemi::diesel::AuditedQueries;

    let db = audited_database!(SCHEMA);
    let mut conn = PgConnection::establish(&db.url()).unwrap();
    {
        let _request = enter_context(Context::new().with("request_id", "import"));
        diesel::insert_into(ledger::table)
            .values((
                ledger::id.eq(1),
                ledger::amount.eq(decimal(AMOUNT[0])),
                ledger::big.eq(decimal(BIG)),
                ledger::ratio.eq(0.1),
            ))
            .execute(&mut conn)
            .unwrap();
    }
    {
        let _request = enter_context(Context::new().with("request_id", "fix"));
        diesel::update(ledger::table.find(1))
            .set(ledger::amount.eq(decimal(AMOUNT[1])))
            .execute(&mut conn)
            .unwrap();
    }
    db.wait_for(2);

    let history = Entry::history(&mut conn, 1).unwrap();
    assert_eq!(history.len(), 2);
    let update = &history[1];
    assert_eq!(update.before.as_ref().unwrap().amount, decimal(AMOUNT[0]));
    assert_eq!(update.after.as_ref().unwrap().amount, decimal(AMOUNT[1]));
    assert_eq!(update.after.as_ref().unwrap().big, decimal(BIG));
    assert_eq!(update.after.as_ref().unwrap().ratio, 0.1);
    // The diff sees a change an f64 comparison would not.
    let diff = update.diff();
    assert_eq!(diff.len(), 1, "{diff:?}");
    assert_eq!(diff[0].column, "amount");
    assert_eq!(diff[0].before.as_ref().unwrap().as_str(), AMOUNT[0]);
    assert_eq!(diff[0].after.as_ref().unwrap().as_str(), AMOUNT[1]);

    let digits = EntryDigits::history(&mut conn, 1).unwrap();
    assert_eq!(
        digits[1].after,
        Some(EntryDigits {
            id: 1,
            amount: AMOUNT[1].to_owned(),
            big: 123_456_789_012_345_678_901_234_567_890,
        })
    );
    let first_committed = history[0].change.committed_at;
    let then = Entry::as_of(&mut conn, 1, first_committed)
        .unwrap()
        .unwrap();
    assert_eq!(then.amount, decimal(AMOUNT[0]));
    let later = update.change.committed_at + Duration::microseconds(1);
    assert_eq!(
        Entry::all_as_of(&mut conn, later).unwrap()[0].amount,
        decimal(AMOUNT[1])
    );

    // Someone changes the amount beyond f64's digits: reverting "fix" sees the conflict.
    db.sql(&format!(
        "UPDATE ledger SET amount = {} WHERE id = 1",
        AMOUNT[2]
    ));
    db.wait_for(3);
    let fix = Revert::context(Context::new().with("request_id", "fix"));
    let plan = plan_revert(&mut conn, &fix).unwrap();
    let StepOutcome::Conflict(Conflict::RowDiffers { differences }) = &plan.steps()[0].outcome
    else {
        panic!("expected a conflict: {plan}");
    };
    assert_eq!(differences[0].column, "amount");
    assert_eq!(
        differences[0].expected.as_ref().unwrap().as_str(),
        AMOUNT[1]
    );
    assert_eq!(differences[0].found.as_ref().unwrap().as_str(), AMOUNT[2]);

    // Forced, the amount goes back to its exact value before "fix".
    apply_revert(&mut conn, &fix.force()).unwrap();
    assert_eq!(stored_amount(&db), [format!("{} {BIG}", AMOUNT[0])]);

    // A deleted row comes back digit for digit.
    {
        let _request = enter_context(Context::new().with("request_id", "remove"));
        diesel::delete(ledger::table.find(1))
            .execute(&mut conn)
            .unwrap();
    }
    db.wait_for(5);
    apply_revert(
        &mut conn,
        &Revert::context(Context::new().with("request_id", "remove")),
    )
    .unwrap();
    assert_eq!(stored_amount(&db), [format!("{} {BIG}", AMOUNT[0])]);
}

/// SeaORM's `Decimal`, in a module of its own: its `AuditedQueries` is not Diesel's.
mod sea_orm_decimal {
    use std::str::FromStr;

    use bemi_testing::audited_database;

    mod price {
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, bemi::Audited)]
        #[sea_orm(table_name = "price")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub sku: String,
            pub amount: Decimal,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn seaorm_decimals_beyond_f64_keep_every_digit() {
        use bemi::sea_orm::{AuditedQueries, Connection};
        use sea_orm::{ActiveModelTrait, Database, IntoActiveModel};

        let db = audited_database!(
            "CREATE TABLE price (sku text PRIMARY KEY, amount numeric NOT NULL);"
        );
        let conn = Connection::new(Database::connect(db.url()).await.unwrap());
        // 19 significant digits: more than an f64 holds, within rust_decimal's 28.
        let amount = rust_decimal::Decimal::from_str("12345678901234567.89").unwrap();
        price::Model {
            sku: "a".into(),
            amount,
        }
        .into_active_model()
        .insert(&conn)
        .await
        .unwrap();
        db.wait_for_async(1).await;

        let history = price::Model::history(&conn, "a".to_owned()).await.unwrap();
        assert_eq!(history[0].after.as_ref().unwrap().amount, amount);
        assert_eq!(
            history[0].after.as_ref().unwrap().amount.to_string(),
            "12345678901234567.89"
        );
    }
}
