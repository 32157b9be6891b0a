-- A Postal message database as Postal's provisioner makes it: CREATE DATABASE
-- ... utf8mb4_unicode_ci, then its migrations 01-20 (lib/postal/message_db/
-- migrations, postalserver/postal 3.3.6) in order, each followed by its row in
-- `migrations`. Written for these tests; statements end with ';' at line end.

-- 01
CREATE TABLE `migrations` (`version` int(11) NOT NULL, PRIMARY KEY (`version`)) ENGINE=InnoDB AUTO_INCREMENT=1 DEFAULT CHARSET=utf8mb4;
INSERT INTO `migrations` (`version`) VALUES (1);
-- 02
CREATE TABLE `messages` (`id` int(11) NOT NULL AUTO_INCREMENT, `token` varchar(255) DEFAULT NULL, `scope` varchar(10) DEFAULT NULL, `rcpt_to` varchar(255) DEFAULT NULL, `mail_from` varchar(255) DEFAULT NULL, `subject` varchar(255) DEFAULT NULL, `message_id` varchar(255) DEFAULT NULL, `timestamp` decimal(18,6) DEFAULT NULL, `route_id` int(11) DEFAULT NULL, `domain_id` int(11) DEFAULT NULL, `credential_id` int(11) DEFAULT NULL, `status` varchar(255) DEFAULT NULL, `held` tinyint(1) DEFAULT 0, `size` varchar(255) DEFAULT NULL, `last_delivery_attempt` decimal(18,6) DEFAULT NULL, `raw_table` varchar(255) DEFAULT NULL, `raw_body_id` int(11) DEFAULT NULL, `raw_headers_id` int(11) DEFAULT NULL, `inspected` tinyint(1) DEFAULT 0, `spam` tinyint(1) DEFAULT 0, `spam_score` decimal(8,2) DEFAULT 0, `threat` tinyint(1) DEFAULT 0, `threat_details` varchar(255) DEFAULT NULL, `bounce` tinyint(1) DEFAULT 0, `bounce_for_id` int(11) DEFAULT 0, `tag` varchar(255) DEFAULT NULL, `loaded` decimal(18,6) DEFAULT NULL, `clicked` decimal(18,6) DEFAULT NULL, `received_with_ssl` tinyint(1) DEFAULT NULL, KEY `on_message_id` (`message_id`(8)) USING BTREE, KEY `on_token` (`token`(6)) USING BTREE, KEY `on_bounce_for_id` (`bounce_for_id`) USING BTREE, KEY `on_held` (`held`) USING BTREE, KEY `on_scope_and_status` (`scope`(1), `spam`, `status`(6), `timestamp`) USING BTREE, KEY `on_scope_and_tag` (`scope`(1), `spam`, `tag`(8), `timestamp`) USING BTREE, KEY `on_scope_and_spam` (`scope`(1), `spam`, `timestamp`) USING BTREE, KEY `on_scope_and_thr_status` (`scope`(1), `threat`, `status`(6), `timestamp`) USING BTREE, KEY `on_scope_and_threat` (`scope`(1), `threat`, `timestamp`) USING BTREE, KEY `on_rcpt_to` (`rcpt_to`(12), `timestamp`) USING BTREE, KEY `on_mail_from` (`mail_from`(12), `timestamp`) USING BTREE, KEY `on_raw_table` (`raw_table`(14)) USING BTREE, PRIMARY KEY (`id`)) ENGINE=InnoDB AUTO_INCREMENT=1 DEFAULT CHARSET=utf8mb4;
INSERT INTO `migrations` (`version`) VALUES (2);
-- 03
CREATE TABLE `deliveries` (`id` int(11) NOT NULL AUTO_INCREMENT, `message_id` int(11) DEFAULT NULL, `status` varchar(255) DEFAULT NULL, `code` int(11) DEFAULT NULL, `output` varchar(512) DEFAULT NULL, `details` varchar(512) DEFAULT NULL, `sent_with_ssl` tinyint(1) DEFAULT 0, `log_id` varchar(100) DEFAULT NULL, `timestamp` decimal(18,6) DEFAULT NULL, KEY `on_message_id` (`message_id`) USING BTREE, PRIMARY KEY (`id`)) ENGINE=InnoDB AUTO_INCREMENT=1 DEFAULT CHARSET=utf8mb4;
INSERT INTO `migrations` (`version`) VALUES (3);
-- 04
CREATE TABLE `live_stats` (`type` varchar(20) NOT NULL, `minute` int(11) NOT NULL, `count` int(11) DEFAULT NULL, `timestamp` decimal(18,6) DEFAULT NULL, PRIMARY KEY (`minute`, `type`(8))) ENGINE=InnoDB AUTO_INCREMENT=1 DEFAULT CHARSET=utf8mb4;
INSERT INTO `migrations` (`version`) VALUES (4);
-- 05
CREATE TABLE `raw_message_sizes` (`id` int(11) NOT NULL AUTO_INCREMENT, `table_name` varchar(255) DEFAULT NULL, `size` bigint DEFAULT NULL, KEY `on_table_name` (`table_name`(14)) USING BTREE, PRIMARY KEY (`id`)) ENGINE=InnoDB AUTO_INCREMENT=1 DEFAULT CHARSET=utf8mb4;
INSERT INTO `migrations` (`version`) VALUES (5);
-- 06
CREATE TABLE `clicks` (`id` int(11) NOT NULL AUTO_INCREMENT, `message_id` int(11) DEFAULT NULL, `link_id` int(11) DEFAULT NULL, `ip_address` varchar(255) DEFAULT NULL, `country` varchar(255) DEFAULT NULL, `city` varchar(255) DEFAULT NULL, `user_agent` varchar(255) DEFAULT NULL, `timestamp` decimal(18,6) DEFAULT NULL, KEY `on_message_id` (`message_id`) USING BTREE, KEY `on_link_id` (`link_id`) USING BTREE, PRIMARY KEY (`id`)) ENGINE=InnoDB AUTO_INCREMENT=1 DEFAULT CHARSET=utf8mb4;
INSERT INTO `migrations` (`version`) VALUES (6);
-- 07
CREATE TABLE `loads` (`id` int(11) NOT NULL AUTO_INCREMENT, `message_id` int(11) DEFAULT NULL, `ip_address` varchar(255) DEFAULT NULL, `country` varchar(255) DEFAULT NULL, `city` varchar(255) DEFAULT NULL, `user_agent` varchar(255) DEFAULT NULL, `timestamp` decimal(18,6) DEFAULT NULL, KEY `on_message_id` (`message_id`) USING BTREE, PRIMARY KEY (`id`)) ENGINE=InnoDB AUTO_INCREMENT=1 DEFAULT CHARSET=utf8mb4;
INSERT INTO `migrations` (`version`) VALUES (7);
-- 08
CREATE TABLE `stats_hourly` (`id` int(11) NOT NULL AUTO_INCREMENT, `time` int(11) DEFAULT NULL, `incoming` bigint DEFAULT NULL, `outgoing` bigint DEFAULT NULL, `spam` bigint DEFAULT NULL, `bounces` bigint DEFAULT NULL, `held` bigint DEFAULT NULL, UNIQUE KEY `on_time` (`time`), PRIMARY KEY (`id`)) ENGINE=InnoDB AUTO_INCREMENT=1 DEFAULT CHARSET=utf8mb4;
CREATE TABLE `stats_daily` (`id` int(11) NOT NULL AUTO_INCREMENT, `time` int(11) DEFAULT NULL, `incoming` bigint DEFAULT NULL, `outgoing` bigint DEFAULT NULL, `spam` bigint DEFAULT NULL, `bounces` bigint DEFAULT NULL, `held` bigint DEFAULT NULL, UNIQUE KEY `on_time` (`time`), PRIMARY KEY (`id`)) ENGINE=InnoDB AUTO_INCREMENT=1 DEFAULT CHARSET=utf8mb4;
CREATE TABLE `stats_monthly` (`id` int(11) NOT NULL AUTO_INCREMENT, `time` int(11) DEFAULT NULL, `incoming` bigint DEFAULT NULL, `outgoing` bigint DEFAULT NULL, `spam` bigint DEFAULT NULL, `bounces` bigint DEFAULT NULL, `held` bigint DEFAULT NULL, UNIQUE KEY `on_time` (`time`), PRIMARY KEY (`id`)) ENGINE=InnoDB AUTO_INCREMENT=1 DEFAULT CHARSET=utf8mb4;
CREATE TABLE `stats_yearly` (`id` int(11) NOT NULL AUTO_INCREMENT, `time` int(11) DEFAULT NULL, `incoming` bigint DEFAULT NULL, `outgoing` bigint DEFAULT NULL, `spam` bigint DEFAULT NULL, `bounces` bigint DEFAULT NULL, `held` bigint DEFAULT NULL, UNIQUE KEY `on_time` (`time`), PRIMARY KEY (`id`)) ENGINE=InnoDB AUTO_INCREMENT=1 DEFAULT CHARSET=utf8mb4;
INSERT INTO `migrations` (`version`) VALUES (8);
-- 09
CREATE TABLE `links` (`id` int(11) NOT NULL AUTO_INCREMENT, `message_id` int(11) DEFAULT NULL, `token` varchar(255) DEFAULT NULL, `hash` varchar(255) DEFAULT NULL, `url` varchar(255) DEFAULT NULL, `timestamp` decimal(18,6) DEFAULT NULL, KEY `on_message_id` (`message_id`) USING BTREE, KEY `on_token` (`token`(8)) USING BTREE, PRIMARY KEY (`id`)) ENGINE=InnoDB AUTO_INCREMENT=1 DEFAULT CHARSET=utf8mb4;
INSERT INTO `migrations` (`version`) VALUES (9);
-- 10
CREATE TABLE `spam_checks` (`id` int(11) NOT NULL AUTO_INCREMENT, `message_id` int(11) DEFAULT NULL, `score` decimal(8,2) DEFAULT NULL, `code` varchar(255) DEFAULT NULL, `description` varchar(255) DEFAULT NULL, KEY `on_message_id` (`message_id`) USING BTREE, KEY `on_code` (`code`(8)) USING BTREE, PRIMARY KEY (`id`)) ENGINE=InnoDB AUTO_INCREMENT=1 DEFAULT CHARSET=utf8mb4;
INSERT INTO `migrations` (`version`) VALUES (10);
-- 11
ALTER TABLE `deliveries` ADD COLUMN `time` decimal(8,2);
INSERT INTO `migrations` (`version`) VALUES (11);
-- 12
ALTER TABLE `messages` ADD COLUMN `hold_expiry` decimal(18,6);
INSERT INTO `migrations` (`version`) VALUES (12);
-- 13
ALTER TABLE `messages` ADD INDEX `on_status` (`status`(8)) USING BTREE;
INSERT INTO `migrations` (`version`) VALUES (13);
-- 14
CREATE TABLE `suppressions` (`id` int(11) NOT NULL AUTO_INCREMENT, `type` varchar(255) DEFAULT NULL, `address` varchar(255) DEFAULT NULL, `reason` varchar(255) DEFAULT NULL, `timestamp` decimal(18,6) DEFAULT NULL, `keep_until` decimal(18,6) DEFAULT NULL, KEY `on_address` (`address`(6)) USING BTREE, KEY `on_keep_until` (`keep_until`) USING BTREE, PRIMARY KEY (`id`)) ENGINE=InnoDB AUTO_INCREMENT=1 DEFAULT CHARSET=utf8mb4;
INSERT INTO `migrations` (`version`) VALUES (14);
-- 15
CREATE TABLE `webhook_requests` (`id` int(11) NOT NULL AUTO_INCREMENT, `uuid` varchar(255) DEFAULT NULL, `event` varchar(255) DEFAULT NULL, `attempt` int(11) DEFAULT NULL, `timestamp` decimal(18,6) DEFAULT NULL, `status_code` int(1) DEFAULT NULL, `body` text DEFAULT NULL, `payload` text DEFAULT NULL, `will_retry` tinyint DEFAULT NULL, KEY `on_uuid` (`uuid`(8)) USING BTREE, KEY `on_event` (`event`(8)) USING BTREE, KEY `on_timestamp` (`timestamp`) USING BTREE, PRIMARY KEY (`id`)) ENGINE=InnoDB AUTO_INCREMENT=1 DEFAULT CHARSET=utf8mb4;
INSERT INTO `migrations` (`version`) VALUES (15);
-- 16
ALTER TABLE `webhook_requests` ADD COLUMN `url` varchar(255);
ALTER TABLE `webhook_requests` ADD COLUMN `webhook_id` int(11);
ALTER TABLE `webhook_requests` ADD INDEX `on_webhook_id` (`webhook_id`) USING BTREE;
INSERT INTO `migrations` (`version`) VALUES (16);
-- 17
ALTER TABLE `messages` ADD COLUMN `tracked_links` int(11) DEFAULT 0;
ALTER TABLE `messages` ADD COLUMN `tracked_images` int(11) DEFAULT 0;
ALTER TABLE `messages` ADD COLUMN `parsed` tinyint DEFAULT 0;
INSERT INTO `migrations` (`version`) VALUES (17);
-- 18
ALTER TABLE `messages` ADD COLUMN `endpoint_id` int(11), ADD COLUMN `endpoint_type` varchar(255);
INSERT INTO `migrations` (`version`) VALUES (18);
-- 19
ALTER DATABASE CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE `clicks` CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE `deliveries` CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE `links` CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE `live_stats` CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE `loads` CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE `messages` CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE `migrations` CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE `raw_message_sizes` CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE `spam_checks` CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE `stats_daily` CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE `stats_hourly` CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE `stats_monthly` CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE `stats_yearly` CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE `suppressions` CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE `webhook_requests` CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
INSERT INTO `migrations` (`version`) VALUES (19);
-- 20
ALTER TABLE `links` MODIFY `url` TEXT;
INSERT INTO `migrations` (`version`) VALUES (20);
