struct NotData;

#[derive(bemi::Audited)]
#[bemi(table = "todo")]
struct Todo {
    id: i32,
    payload: NotData,
}

fn main() {}
