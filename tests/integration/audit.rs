//! AuditService end to end: denials and failures recorded with the caller,
//! filters and paging.

use crate::common;

use std::collections::BTreeSet;

use automation_control_plane::proto::automation_v1 as pb;
use common::{AuditServiceClient, TestApp, UserServiceClient, authed, new_user};
use tonic::Code;

#[tokio::test]
async fn the_audit_trail_is_filtered_and_paged() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (viewer_id, viewer) = app.user_with_roles("walt", &["viewer"]).await;
    // A denied call is audited with the caller.
    let denied = UserServiceClient::new(app.channel().await)
        .create_user(authed(&viewer, new_user("nope")))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let _ = app.login("walt", "wrong-password").await;

    let audit = AuditServiceClient::new(app.channel().await);
    let list = |request: pb::ListAuditLogsRequest| {
        let mut audit = audit.clone();
        let admin = admin.clone();
        async move {
            audit
                .list_audit_logs(authed(&admin, request))
                .await
                .map(|r| r.into_inner())
        }
    };
    let denials = list(pb::ListAuditLogsRequest {
        action: "auth.denied".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .audit_logs;
    assert_eq!(denials.len(), 1);
    assert_eq!(denials[0].user_id, viewer_id);
    assert_eq!(denials[0].resource, "automation.v1.UserService/CreateUser");
    assert_eq!(denials[0].outcome, "failure");

    let walts = list(pb::ListAuditLogsRequest {
        user_id: viewer_id.clone(),
        outcome: "failure".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .audit_logs;
    let actions: BTreeSet<String> = walts.iter().map(|l| l.action.clone()).collect();
    assert_eq!(
        actions,
        ["auth.denied", "auth.login"].map(String::from).into()
    );

    // Pages are newest first and cover everything once.
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(pb::ListAuditLogsRequest {
            page_size: 3,
            page_token: token.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        ids.extend(page.audit_logs.iter().map(|l| {
            let t = l.create_time.unwrap();
            (t.seconds, t.nanos, l.id.clone())
        }));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(ids, sorted);
    let unique: BTreeSet<_> = ids.iter().map(|(_, _, id)| id.clone()).collect();
    assert_eq!(unique.len(), ids.len());
    assert!(ids.len() >= 6);

    // A time window in the future is empty.
    let later = prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp() + 3600,
        nanos: 0,
    };
    let none = list(pb::ListAuditLogsRequest {
        start_time: Some(later),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(none.audit_logs.is_empty());

    let bad = list(pb::ListAuditLogsRequest {
        outcome: "maybe".into(),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    app.stop().await;
}
