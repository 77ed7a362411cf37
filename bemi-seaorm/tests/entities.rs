//! The entity the tests use.

pub const SCHEMA: &str = "CREATE TABLE todo (id bigserial PRIMARY KEY, task text NOT NULL, done boolean NOT NULL DEFAULT false)";

pub mod todo {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "todo")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub task: String,
        pub done: bool,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
