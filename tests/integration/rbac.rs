//! The authorization layer: a matrix over every declared RPC, and attacks on
//! access tokens.

use crate::common;

use automation_control_plane::{
    auth::{
        policy::{AccessRule, METHOD_ACCESS, grants},
        tokens::AccessClaims,
    },
    proto::automation_v1 as pb,
    seed::DEFAULT_ROLES,
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use common::{AUDIENCE, AuthServiceClient, ISSUER, JWT_SECRET, TestApp, authed};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tonic::{Code, Request, transport::Channel};

/// Calls `path` with an empty message, as a unary or (for the worker stream)
/// a bidirectional call, and returns the status code it ends with.
async fn call_raw(channel: Channel, path: &'static str, token: Option<&str>) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let path = http::uri::PathAndQuery::from_static(path);
    fn with_token<T>(mut request: Request<T>, token: Option<&str>) -> Request<T> {
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    }
    let result = if path.path().ends_with("/Work") {
        let request = with_token(Request::new(tokio_stream::iter(Vec::<()>::new())), token);
        match grpc.streaming(request, path, codec).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                match stream.message().await {
                    Ok(_) => Ok(()),
                    Err(status) => Err(status),
                }
            }
            Err(status) => Err(status),
        }
    } else {
        grpc.unary(with_token(Request::new(()), token), path, codec)
            .await
            .map(drop)
    };
    match result {
        Ok(()) => Code::Ok,
        Err(status) => status.code(),
    }
}

fn expired_token(app: &TestApp, valid: &str) -> String {
    let mut claims = claims_of(valid);
    claims.exp = chrono::Utc::now().timestamp() - 3600;
    claims.iat = claims.exp - 900;
    claims.nbf = claims.iat;
    app.keys.sign(&claims).unwrap()
}

fn claims_of(token: &str) -> AccessClaims {
    let payload = token.split('.').nth(1).expect("payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64")).expect("claims")
}

#[tokio::test]
async fn every_rpc_answers_each_caller_as_declared() {
    let app = TestApp::spawn().await;
    let channel = app.channel().await;
    let password = "user-password-1";
    // One user per default role.
    for (role, _, _) in DEFAULT_ROLES.iter().filter(|(r, _, _)| *r != "admin") {
        app.user_with_roles(&format!("{role}-user"), &[role]).await;
    }
    let login_of = |role: &str| {
        if role == "admin" {
            ("admin".to_owned(), common::ADMIN_PASSWORD.to_owned())
        } else {
            (format!("{role}-user"), password.to_owned())
        }
    };
    let expired = expired_token(&app, &app.admin_token().await);

    let mut checked = 0;
    for (path, rule) in METHOD_ACCESS {
        // Anonymous and expired callers.
        for token in [None, Some(expired.as_str())] {
            let code = call_raw(channel.clone(), path, token).await;
            if *rule == AccessRule::Public {
                // A public RPC ignores any token and reaches its handler.
                assert!(
                    !matches!(code, Code::PermissionDenied | Code::Unauthenticated),
                    "{path} is public but answered {code:?}"
                );
            } else {
                assert_eq!(code, Code::Unauthenticated, "{path} with token {token:?}");
            }
            checked += 1;
        }
        // Each default role, with a fresh session so that Logout and friends
        // do not disturb the next call.
        for (role, _, permissions) in DEFAULT_ROLES {
            let (login, password) = login_of(role);
            let token = app
                .login(&login, &password)
                .await
                .expect("login")
                .access_token;
            let code = call_raw(channel.clone(), path, Some(&token)).await;
            let allowed = match rule {
                AccessRule::Public | AccessRule::Authenticated => true,
                AccessRule::Permission(p) => grants(permissions, p),
            };
            if allowed {
                assert!(
                    !matches!(code, Code::PermissionDenied | Code::Unauthenticated),
                    "{role} may call {path} but got {code:?}"
                );
            } else {
                assert_eq!(code, Code::PermissionDenied, "{role} calling {path}");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, METHOD_ACCESS.len() * 5);
    app.stop().await;
}

#[tokio::test]
async fn identity_rpcs_are_implemented() {
    let app = TestApp::spawn().await;
    let channel = app.channel().await;
    for (path, _) in METHOD_ACCESS.iter().filter(|(p, _)| {
        ["Auth", "User", "Role", "Audit"]
            .iter()
            .any(|s| p.starts_with(&format!("/automation.v1.{s}Service/")))
    }) {
        let token = app.admin_token().await;
        let code = call_raw(channel.clone(), path, Some(&token)).await;
        assert_ne!(code, Code::Unimplemented, "{path}");
    }
    app.stop().await;
}

#[tokio::test]
async fn forged_and_stale_tokens_are_refused() {
    let app = TestApp::spawn().await;
    let login = app.login("admin", common::ADMIN_PASSWORD).await.unwrap();
    let valid = login.access_token.clone();
    let claims = claims_of(&valid);
    let now = chrono::Utc::now().timestamp();
    let hs256 = |claims: &AccessClaims, secret: &[u8]| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    };
    let header_b64 = |json: &str| URL_SAFE_NO_PAD.encode(json);
    let payload_b64 = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());

    let mut attacks: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!(
                "{}.{payload_b64}.",
                header_b64(r#"{"alg":"none","typ":"JWT"}"#)
            ),
        ),
        (
            "another algorithm (HS384)",
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS384),
                &claims,
                &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
            )
            .unwrap(),
        ),
        (
            "wrong key",
            hs256(&claims, b"another-secret-another-secret-0123456789"),
        ),
        ("garbage", "not-a-token".into()),
    ];
    // Tampered payload: a valid signature over other claims.
    let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
    let mut tampered = claims.clone();
    tampered.sub = uuid::Uuid::new_v4().to_string();
    parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&tampered).unwrap());
    attacks.push(("tampered payload", parts.join(".")));

    type ClaimChange = Box<dyn Fn(&mut AccessClaims)>;
    let variants: Vec<(&str, ClaimChange)> = vec![
        (
            "expired",
            Box::new(move |c| {
                c.exp = now - 60;
                c.iat = now - 1000;
                c.nbf = now - 1000;
            }),
        ),
        ("not yet valid", Box::new(move |c| c.nbf = now + 3600)),
        ("wrong issuer", Box::new(|c| c.iss = "someone-else".into())),
        (
            "wrong audience",
            Box::new(|c| c.aud = "another-service".into()),
        ),
        (
            "not an access token",
            Box::new(|c| c.typ = "refresh".into()),
        ),
        (
            "unknown session",
            Box::new(|c| c.sid = uuid::Uuid::new_v4().to_string()),
        ),
    ];
    for (name, change) in variants {
        let mut forged = claims.clone();
        change(&mut forged);
        attacks.push((name, app.keys.sign(&forged).unwrap()));
    }
    assert_eq!(claims.iss, ISSUER);
    assert_eq!(claims.aud, AUDIENCE);

    let mut client = AuthServiceClient::new(app.channel().await);
    client
        .get_current_user(authed(&valid, pb::GetCurrentUserRequest {}))
        .await
        .expect("the genuine token works");
    for (name, token) in &attacks {
        let status = client
            .get_current_user(authed(token, pb::GetCurrentUserRequest {}))
            .await
            .expect_err(name);
        assert_eq!(status.code(), Code::Unauthenticated, "{name}: {status:?}");
    }

    // A revoked session's token stops working at once.
    client
        .logout(authed(&valid, pb::LogoutRequest {}))
        .await
        .expect("logout");
    let status = client
        .get_current_user(authed(&valid, pb::GetCurrentUserRequest {}))
        .await
        .expect_err("revoked");
    assert_eq!(status.code(), Code::Unauthenticated);

    // Missing and malformed headers.
    let status = client
        .get_current_user(pb::GetCurrentUserRequest {})
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut request = Request::new(pb::GetCurrentUserRequest {});
    request
        .metadata_mut()
        .insert("authorization", format!("Basic {valid}").parse().unwrap());
    assert_eq!(
        client.get_current_user(request).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    app.stop().await;
}
