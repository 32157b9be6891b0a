-- Postal 3's main database, written for these tests from Postal's db/schema.rb
-- (postalserver/postal 3.3.6, schema version 2024_03_11_205229): every table,
-- column, default and index as Rails creates them, plus Rails' own two tables.
-- Only the tests read this: they build a database the way Postal does and check
-- that nothing of Postal's changes.

CREATE TABLE `additional_route_endpoints` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `route_id` int(11) DEFAULT NULL,
  `endpoint_type` varchar(255) DEFAULT NULL,
  `endpoint_id` int(11) DEFAULT NULL,
  `created_at` datetime NOT NULL,
  `updated_at` datetime NOT NULL,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `address_endpoints` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `server_id` int(11) DEFAULT NULL,
  `uuid` varchar(255) DEFAULT NULL,
  `address` varchar(255) DEFAULT NULL,
  `last_used_at` datetime DEFAULT NULL,
  `created_at` datetime NOT NULL,
  `updated_at` datetime NOT NULL,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `authie_sessions` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `token` varchar(255) DEFAULT NULL,
  `browser_id` varchar(255) DEFAULT NULL,
  `user_id` int(11) DEFAULT NULL,
  `active` tinyint(1) DEFAULT 1,
  `data` text,
  `expires_at` datetime DEFAULT NULL,
  `login_at` datetime DEFAULT NULL,
  `login_ip` varchar(255) DEFAULT NULL,
  `last_activity_at` datetime DEFAULT NULL,
  `last_activity_ip` varchar(255) DEFAULT NULL,
  `last_activity_path` varchar(255) DEFAULT NULL,
  `user_agent` varchar(255) DEFAULT NULL,
  `created_at` datetime DEFAULT NULL,
  `updated_at` datetime DEFAULT NULL,
  `user_type` varchar(255) DEFAULT NULL,
  `parent_id` int(11) DEFAULT NULL,
  `two_factored_at` datetime DEFAULT NULL,
  `two_factored_ip` varchar(255) DEFAULT NULL,
  `requests` int(11) DEFAULT 0,
  `password_seen_at` datetime DEFAULT NULL,
  `token_hash` varchar(255) DEFAULT NULL,
  `host` varchar(255) DEFAULT NULL,
  `skip_two_factor` tinyint(1) DEFAULT 0,
  `login_ip_country` varchar(255) DEFAULT NULL,
  `two_factored_ip_country` varchar(255) DEFAULT NULL,
  `last_activity_ip_country` varchar(255) DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `index_authie_sessions_on_browser_id` (`browser_id`(8)),
  KEY `index_authie_sessions_on_token` (`token`(8)),
  KEY `index_authie_sessions_on_token_hash` (`token_hash`(8)),
  KEY `index_authie_sessions_on_user_id` (`user_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `credentials` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `server_id` int(11) DEFAULT NULL,
  `key` varchar(255) DEFAULT NULL,
  `type` varchar(255) DEFAULT NULL,
  `name` varchar(255) DEFAULT NULL,
  `options` text,
  `last_used_at` datetime(6) DEFAULT NULL,
  `created_at` datetime(6) DEFAULT NULL,
  `updated_at` datetime(6) DEFAULT NULL,
  `hold` tinyint(1) DEFAULT 0,
  `uuid` varchar(255) DEFAULT NULL,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `domains` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `server_id` int(11) DEFAULT NULL,
  `uuid` varchar(255) DEFAULT NULL,
  `name` varchar(255) DEFAULT NULL,
  `verification_token` varchar(255) DEFAULT NULL,
  `verification_method` varchar(255) DEFAULT NULL,
  `verified_at` datetime DEFAULT NULL,
  `dkim_private_key` text,
  `created_at` datetime(6) DEFAULT NULL,
  `updated_at` datetime(6) DEFAULT NULL,
  `dns_checked_at` datetime(6) DEFAULT NULL,
  `spf_status` varchar(255) DEFAULT NULL,
  `spf_error` varchar(255) DEFAULT NULL,
  `dkim_status` varchar(255) DEFAULT NULL,
  `dkim_error` varchar(255) DEFAULT NULL,
  `mx_status` varchar(255) DEFAULT NULL,
  `mx_error` varchar(255) DEFAULT NULL,
  `return_path_status` varchar(255) DEFAULT NULL,
  `return_path_error` varchar(255) DEFAULT NULL,
  `outgoing` tinyint(1) DEFAULT 1,
  `incoming` tinyint(1) DEFAULT 1,
  `owner_type` varchar(255) DEFAULT NULL,
  `owner_id` int(11) DEFAULT NULL,
  `dkim_identifier_string` varchar(255) DEFAULT NULL,
  `use_for_any` tinyint(1) DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `index_domains_on_server_id` (`server_id`),
  KEY `index_domains_on_uuid` (`uuid`(8))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `http_endpoints` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `server_id` int(11) DEFAULT NULL,
  `uuid` varchar(255) DEFAULT NULL,
  `name` varchar(255) DEFAULT NULL,
  `url` varchar(255) DEFAULT NULL,
  `encoding` varchar(255) DEFAULT NULL,
  `format` varchar(255) DEFAULT NULL,
  `strip_replies` tinyint(1) DEFAULT 0,
  `error` text,
  `disabled_until` datetime(6) DEFAULT NULL,
  `last_used_at` datetime(6) DEFAULT NULL,
  `created_at` datetime(6) DEFAULT NULL,
  `updated_at` datetime(6) DEFAULT NULL,
  `include_attachments` tinyint(1) DEFAULT 1,
  `timeout` int(11) DEFAULT NULL,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `ip_addresses` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `ip_pool_id` int(11) DEFAULT NULL,
  `ipv4` varchar(255) DEFAULT NULL,
  `ipv6` varchar(255) DEFAULT NULL,
  `created_at` datetime(6) DEFAULT NULL,
  `updated_at` datetime(6) DEFAULT NULL,
  `hostname` varchar(255) DEFAULT NULL,
  `priority` int(11) DEFAULT NULL,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `ip_pool_rules` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `uuid` varchar(255) DEFAULT NULL,
  `owner_type` varchar(255) DEFAULT NULL,
  `owner_id` int(11) DEFAULT NULL,
  `ip_pool_id` int(11) DEFAULT NULL,
  `from_text` text,
  `to_text` text,
  `created_at` datetime NOT NULL,
  `updated_at` datetime NOT NULL,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `ip_pools` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `name` varchar(255) DEFAULT NULL,
  `uuid` varchar(255) DEFAULT NULL,
  `created_at` datetime(6) DEFAULT NULL,
  `updated_at` datetime(6) DEFAULT NULL,
  `default` tinyint(1) DEFAULT 0,
  PRIMARY KEY (`id`),
  KEY `index_ip_pools_on_uuid` (`uuid`(8))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `organization_ip_pools` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `organization_id` int(11) DEFAULT NULL,
  `ip_pool_id` int(11) DEFAULT NULL,
  `created_at` datetime NOT NULL,
  `updated_at` datetime NOT NULL,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `organization_users` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `organization_id` int(11) DEFAULT NULL,
  `user_id` int(11) DEFAULT NULL,
  `created_at` datetime(6) DEFAULT NULL,
  `admin` tinyint(1) DEFAULT 0,
  `all_servers` tinyint(1) DEFAULT 1,
  `user_type` varchar(255) DEFAULT NULL,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `organizations` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `uuid` varchar(255) DEFAULT NULL,
  `name` varchar(255) DEFAULT NULL,
  `permalink` varchar(255) DEFAULT NULL,
  `time_zone` varchar(255) DEFAULT NULL,
  `created_at` datetime(6) DEFAULT NULL,
  `updated_at` datetime(6) DEFAULT NULL,
  `ip_pool_id` int(11) DEFAULT NULL,
  `owner_id` int(11) DEFAULT NULL,
  `deleted_at` datetime(6) DEFAULT NULL,
  `suspended_at` datetime(6) DEFAULT NULL,
  `suspension_reason` varchar(255) DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `index_organizations_on_permalink` (`permalink`(8)),
  KEY `index_organizations_on_uuid` (`uuid`(8))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `queued_messages` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `server_id` int(11) DEFAULT NULL,
  `message_id` int(11) DEFAULT NULL,
  `domain` varchar(255) DEFAULT NULL,
  `locked_by` varchar(255) DEFAULT NULL,
  `locked_at` datetime(6) DEFAULT NULL,
  `retry_after` datetime DEFAULT NULL,
  `created_at` datetime(6) DEFAULT NULL,
  `updated_at` datetime(6) DEFAULT NULL,
  `ip_address_id` int(11) DEFAULT NULL,
  `attempts` int(11) DEFAULT 0,
  `route_id` int(11) DEFAULT NULL,
  `manual` tinyint(1) DEFAULT 0,
  `batch_key` varchar(255) DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `index_queued_messages_on_domain` (`domain`(8)),
  KEY `index_queued_messages_on_message_id` (`message_id`),
  KEY `index_queued_messages_on_server_id` (`server_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `routes` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `uuid` varchar(255) DEFAULT NULL,
  `server_id` int(11) DEFAULT NULL,
  `domain_id` int(11) DEFAULT NULL,
  `endpoint_id` int(11) DEFAULT NULL,
  `endpoint_type` varchar(255) DEFAULT NULL,
  `name` varchar(255) DEFAULT NULL,
  `spam_mode` varchar(255) DEFAULT NULL,
  `created_at` datetime(6) DEFAULT NULL,
  `updated_at` datetime(6) DEFAULT NULL,
  `token` varchar(255) DEFAULT NULL,
  `mode` varchar(255) DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `index_routes_on_token` (`token`(6))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `scheduled_tasks` (
  `id` bigint(20) NOT NULL AUTO_INCREMENT,
  `name` varchar(255) DEFAULT NULL,
  `next_run_after` datetime DEFAULT NULL,
  PRIMARY KEY (`id`),
  UNIQUE KEY `index_scheduled_tasks_on_name` (`name`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `servers` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `organization_id` int(11) DEFAULT NULL,
  `uuid` varchar(255) DEFAULT NULL,
  `name` varchar(255) DEFAULT NULL,
  `mode` varchar(255) DEFAULT NULL,
  `ip_pool_id` int(11) DEFAULT NULL,
  `created_at` datetime(6) DEFAULT NULL,
  `updated_at` datetime(6) DEFAULT NULL,
  `permalink` varchar(255) DEFAULT NULL,
  `send_limit` int(11) DEFAULT NULL,
  `deleted_at` datetime(6) DEFAULT NULL,
  `message_retention_days` int(11) DEFAULT NULL,
  `raw_message_retention_days` int(11) DEFAULT NULL,
  `raw_message_retention_size` int(11) DEFAULT NULL,
  `allow_sender` tinyint(1) DEFAULT 0,
  `token` varchar(255) DEFAULT NULL,
  `send_limit_approaching_at` datetime(6) DEFAULT NULL,
  `send_limit_approaching_notified_at` datetime(6) DEFAULT NULL,
  `send_limit_exceeded_at` datetime(6) DEFAULT NULL,
  `send_limit_exceeded_notified_at` datetime(6) DEFAULT NULL,
  `spam_threshold` decimal(8,2) DEFAULT NULL,
  `spam_failure_threshold` decimal(8,2) DEFAULT NULL,
  `postmaster_address` varchar(255) DEFAULT NULL,
  `suspended_at` datetime(6) DEFAULT NULL,
  `outbound_spam_threshold` decimal(8,2) DEFAULT NULL,
  `domains_not_to_click_track` text,
  `suspension_reason` varchar(255) DEFAULT NULL,
  `log_smtp_data` tinyint(1) DEFAULT 0,
  `privacy_mode` tinyint(1) DEFAULT 0,
  PRIMARY KEY (`id`),
  KEY `index_servers_on_organization_id` (`organization_id`),
  KEY `index_servers_on_permalink` (`permalink`(6)),
  KEY `index_servers_on_token` (`token`(6)),
  KEY `index_servers_on_uuid` (`uuid`(8))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `smtp_endpoints` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `server_id` int(11) DEFAULT NULL,
  `uuid` varchar(255) DEFAULT NULL,
  `name` varchar(255) DEFAULT NULL,
  `hostname` varchar(255) DEFAULT NULL,
  `ssl_mode` varchar(255) DEFAULT NULL,
  `port` int(11) DEFAULT NULL,
  `error` text,
  `disabled_until` datetime(6) DEFAULT NULL,
  `last_used_at` datetime(6) DEFAULT NULL,
  `created_at` datetime(6) DEFAULT NULL,
  `updated_at` datetime(6) DEFAULT NULL,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `statistics` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `total_messages` bigint(20) DEFAULT 0,
  `total_outgoing` bigint(20) DEFAULT 0,
  `total_incoming` bigint(20) DEFAULT 0,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `track_certificates` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `domain` varchar(255) DEFAULT NULL,
  `certificate` text,
  `intermediaries` text,
  `key` text,
  `expires_at` datetime DEFAULT NULL,
  `renew_after` datetime DEFAULT NULL,
  `verification_path` varchar(255) DEFAULT NULL,
  `verification_string` varchar(255) DEFAULT NULL,
  `created_at` datetime NOT NULL,
  `updated_at` datetime NOT NULL,
  PRIMARY KEY (`id`),
  KEY `index_track_certificates_on_domain` (`domain`(8))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `track_domains` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `uuid` varchar(255) DEFAULT NULL,
  `server_id` int(11) DEFAULT NULL,
  `domain_id` int(11) DEFAULT NULL,
  `name` varchar(255) DEFAULT NULL,
  `dns_checked_at` datetime DEFAULT NULL,
  `dns_status` varchar(255) DEFAULT NULL,
  `dns_error` varchar(255) DEFAULT NULL,
  `created_at` datetime NOT NULL,
  `updated_at` datetime NOT NULL,
  `ssl_enabled` tinyint(1) DEFAULT 1,
  `track_clicks` tinyint(1) DEFAULT 1,
  `track_loads` tinyint(1) DEFAULT 1,
  `excluded_click_domains` text,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `user_invites` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `uuid` varchar(255) DEFAULT NULL,
  `email_address` varchar(255) DEFAULT NULL,
  `expires_at` datetime(6) DEFAULT NULL,
  `created_at` datetime(6) DEFAULT NULL,
  `updated_at` datetime(6) DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `index_user_invites_on_uuid` (`uuid`(12))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `users` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `uuid` varchar(255) DEFAULT NULL,
  `first_name` varchar(255) DEFAULT NULL,
  `last_name` varchar(255) DEFAULT NULL,
  `email_address` varchar(255) DEFAULT NULL,
  `password_digest` varchar(255) DEFAULT NULL,
  `time_zone` varchar(255) DEFAULT NULL,
  `email_verification_token` varchar(255) DEFAULT NULL,
  `email_verified_at` datetime DEFAULT NULL,
  `created_at` datetime(6) DEFAULT NULL,
  `updated_at` datetime(6) DEFAULT NULL,
  `password_reset_token` varchar(255) DEFAULT NULL,
  `password_reset_token_valid_until` datetime DEFAULT NULL,
  `admin` tinyint(1) DEFAULT 0,
  `oidc_uid` varchar(255) DEFAULT NULL,
  `oidc_issuer` varchar(255) DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `index_users_on_email_address` (`email_address`(8)),
  KEY `index_users_on_uuid` (`uuid`(8))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `webhook_events` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `webhook_id` int(11) DEFAULT NULL,
  `event` varchar(255) DEFAULT NULL,
  `created_at` datetime(6) DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `index_webhook_events_on_webhook_id` (`webhook_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `webhook_requests` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `server_id` int(11) DEFAULT NULL,
  `webhook_id` int(11) DEFAULT NULL,
  `url` varchar(255) DEFAULT NULL,
  `event` varchar(255) DEFAULT NULL,
  `uuid` varchar(255) DEFAULT NULL,
  `payload` text,
  `attempts` int(11) DEFAULT 0,
  `retry_after` datetime(6) DEFAULT NULL,
  `error` text,
  `created_at` datetime(6) DEFAULT NULL,
  `locked_by` varchar(255) DEFAULT NULL,
  `locked_at` datetime DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `index_webhook_requests_on_locked_by` (`locked_by`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `webhooks` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `server_id` int(11) DEFAULT NULL,
  `uuid` varchar(255) DEFAULT NULL,
  `name` varchar(255) DEFAULT NULL,
  `url` varchar(255) DEFAULT NULL,
  `last_used_at` datetime DEFAULT NULL,
  `all_events` tinyint(1) DEFAULT 0,
  `enabled` tinyint(1) DEFAULT 1,
  `sign` tinyint(1) DEFAULT 1,
  `created_at` datetime(6) DEFAULT NULL,
  `updated_at` datetime(6) DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `index_webhooks_on_server_id` (`server_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `worker_roles` (
  `id` bigint(20) NOT NULL AUTO_INCREMENT,
  `role` varchar(255) DEFAULT NULL,
  `worker` varchar(255) DEFAULT NULL,
  `acquired_at` datetime DEFAULT NULL,
  PRIMARY KEY (`id`),
  UNIQUE KEY `index_worker_roles_on_role` (`role`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `schema_migrations` (
  `version` varchar(255) NOT NULL,
  PRIMARY KEY (`version`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

CREATE TABLE `ar_internal_metadata` (
  `key` varchar(255) NOT NULL,
  `value` varchar(255) DEFAULT NULL,
  `created_at` datetime(6) NOT NULL,
  `updated_at` datetime(6) NOT NULL,
  PRIMARY KEY (`key`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci;

