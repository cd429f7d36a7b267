# Auth0 as code: the API STORM verifies tokens for (RS256, the audience, the scopes STORM checks), the
# chat application (a browser SPA, authorization code with PKCE, no secret) and the provisioning
# application (client credentials, scope workspaces:create; its secret goes to Secrets Manager).
# The workspace claim (https://storm.chat/ws, STORM_AUTH0_WORKSPACE_CLAIM) is added by a post-login Action
# that is not managed here (docs/security.md, "Identity").

resource "auth0_resource_server" "storm" {
  name                                            = "STORM (${var.environment})"
  identifier                                      = var.api_identifier
  signing_alg                                     = "RS256"
  token_lifetime                                  = var.token_lifetime_s
  token_lifetime_for_web                          = var.token_lifetime_s
  allow_offline_access                            = false
  skip_consent_for_verifiable_first_party_clients = true
  enforce_policies                                = true
  token_dialect                                   = "access_token_authz" # permissions in the token: STORM reads scope and permissions
}

# The scopes STORM checks: `chat` on every token (STORM_AUTH0_REQUIRED_SCOPES), `workspaces:create` on
# the tenants API's provisioning calls (tenants/service.py).
resource "auth0_resource_server_scopes" "storm" {
  resource_server_identifier = auth0_resource_server.storm.identifier

  scopes {
    name        = "chat"
    description = "Connect to the gateways and use the chat protocol"
  }

  scopes {
    name        = "workspaces:create"
    description = "Create workspaces through the tenants API"
  }
}

resource "auth0_client" "chat" {
  name                = "STORM chat (${var.environment})"
  app_type            = "spa"
  is_first_party      = true
  oidc_conformant     = true
  grant_types         = ["authorization_code", "refresh_token"]
  callbacks           = var.chat_origins
  allowed_logout_urls = var.chat_origins
  web_origins         = var.chat_origins
  allowed_origins     = var.chat_origins

  jwt_configuration {
    alg = "RS256"
  }

  refresh_token {
    rotation_type   = "rotating"
    expiration_type = "expiring"
    token_lifetime  = 86400
    leeway          = 0
  }
}

resource "auth0_client_credentials" "chat" {
  client_id             = auth0_client.chat.id
  authentication_method = "none" # public client: PKCE, no secret
}

resource "auth0_client" "provisioning" {
  name            = "STORM provisioning (${var.environment})"
  app_type        = "non_interactive"
  is_first_party  = true
  oidc_conformant = true
  grant_types     = ["client_credentials"]

  jwt_configuration {
    alg = "RS256"
  }
}

resource "auth0_client_credentials" "provisioning" {
  client_id             = auth0_client.provisioning.id
  authentication_method = "client_secret_post"
}

resource "auth0_client_grant" "provisioning" {
  client_id = auth0_client.provisioning.id
  audience  = auth0_resource_server.storm.identifier
  scopes    = ["workspaces:create"]

  depends_on = [auth0_resource_server_scopes.storm]
}
