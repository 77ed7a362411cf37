#[derive(bemi::Audited)]
#[bemi(table = "todo")]
struct Todo {
    id: Option<i32>,
}

fn main() {}
