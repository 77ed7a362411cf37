//! Real HTTP requests from different users; the audit trail shows who did what, where.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use bemi_testing::{audited_database, stored};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};

/// Sends one HTTP/1.1 request to the service and returns the status and the JSON body.
async fn request(
    address: std::net::SocketAddr,
    method: &str,
    path: &str,
    user: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", address.to_string())
        .header("x-user-id", user)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            body.map(|body| body.to_string()).unwrap_or_default(),
        )))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_audited_with_its_user_and_endpoint() {
    let audited = audited_database!(axum_todo::SCHEMA);
    let app = axum_todo::app(axum_todo::pool(&audited.url()).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // Users create todos concurrently.
    let mut creations = Vec::new();
    for (user, task) in [("ann", "Sleep"), ("bob", "Eat"), ("cid", "Repeat")] {
        creations.push(tokio::spawn(async move {
            request(address, "POST", "/todos", user, Some(json!({"task": task}))).await
        }));
    }
    let mut ids = std::collections::HashMap::new();
    for creation in creations {
        let (status, todo) = creation.await.unwrap();
        assert_eq!(status, 201, "{todo}");
        ids.insert(
            todo["task"].as_str().unwrap().to_owned(),
            todo["id"].as_i64().unwrap(),
        );
    }
    let (status, completed) = request(
        address,
        "PUT",
        &format!("/todos/{}/complete", ids["Sleep"]),
        "bob",
        None,
    )
    .await;
    assert_eq!((status, &completed["is_completed"]), (200, &json!(true)));
    let (status, _) = request(
        address,
        "DELETE",
        &format!("/todos/{}", ids["Eat"]),
        "ann",
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, listed) = request(address, "GET", "/todos", "cid", None).await;
    assert_eq!((status, listed.as_array().unwrap().len()), (200, 2));

    // Reads are not audited: five writes, five changes.
    let changes = audited.wait_for_async(5).await;
    assert_eq!(changes.len(), 5);
    for (task, user) in [("Sleep", "ann"), ("Eat", "bob"), ("Repeat", "cid")] {
        let id = ids[task];
        let creation = changes
            .iter()
            .find(|change| {
                change.operation == "CREATE" && change.primary_key == Some(id.to_string())
            })
            .unwrap();
        assert_eq!(
            creation,
            &stored(
                "todo",
                "CREATE",
                Some(&id.to_string()),
                json!({}),
                json!({"id": id, "task": task, "is_completed": false}),
                json!({"userId": user, "endpoint": "/todos", "method": "POST", "params": {"task": task}}),
            )
        );
    }
    let sleep = ids["Sleep"];
    assert_eq!(
        changes[3],
        stored(
            "todo",
            "UPDATE",
            Some(&sleep.to_string()),
            json!({"id": sleep, "task": "Sleep", "is_completed": false}),
            json!({"id": sleep, "task": "Sleep", "is_completed": true}),
            json!({"userId": "bob", "endpoint": format!("/todos/{sleep}/complete"), "method": "PUT"}),
        )
    );
    let eat = ids["Eat"];
    assert_eq!(
        changes[4],
        stored(
            "todo",
            "DELETE",
            Some(&eat.to_string()),
            json!({"id": eat, "task": "Eat", "is_completed": false}),
            json!({}),
            json!({"userId": "ann", "endpoint": format!("/todos/{eat}"), "method": "DELETE"}),
        )
    );
}
