//! Join tokens: how an administrator lets a new host join.

use crate::{Client, ClientError, page_query, seg};
use panal_types::join::{JoinToken, JoinTokenCreate, JoinTokenCreated};
use panal_types::page::Page;
use reqwest::Method;

impl Client {
    /// Makes a join token; its secret is in the answer only.
    pub async fn create_join_token(
        &self,
        req: &JoinTokenCreate,
    ) -> Result<JoinTokenCreated, ClientError> {
        self.call(Method::POST, "/api/v1/join-tokens", &[], Some(req))
            .await
    }

    /// Lists join tokens.
    pub async fn list_join_tokens(
        &self,
        page_token: Option<&str>,
    ) -> Result<Page<JoinToken>, ClientError> {
        self.call::<(), _>(
            Method::GET,
            "/api/v1/join-tokens",
            &page_query(None, page_token),
            None,
        )
        .await
    }

    /// Revokes a join token.
    pub async fn revoke_join_token(&self, id: &str) -> Result<JoinToken, ClientError> {
        self.call::<(), _>(
            Method::DELETE,
            &format!("/api/v1/join-tokens/{}", seg(id)),
            &[],
            None,
        )
        .await
    }
}
