#!/usr/bin/env python3
# The source of mutants/*.patch: each m(...) names a deliberate bug (a
# replacement in one file) and the tests that must catch it. After a change
# that moves the code a patch touches, run `python3 mutants/gen.py` (all) or
# `python3 mutants/gen.py NAME...` to write the patches again from the tree.
import difflib, sys, os
os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
M = []
def m(name, desc, path, old, new, tests, count=1):
    M.append((name, desc, path, old, new, tests, count))

m("01-enqueue-without-sync", "invariant 1: the queue's enqueue commits without fsync",
  "queue/enqueue.go", "	if err := q.batches.Commit(b, true); err != nil {\n		return err\n	}\n	for _, c := range newOwners {",
  "	if err := q.batches.Commit(b, false); err != nil {\n		return err\n	}\n	for _, c := range newOwners {",
  ["./queue/ -run 'TestFailedFsyncIsNeverAcknowledged'"])
m("02-wal-sync-noop", "invariant 1: the WAL's Sync does nothing",
  "internal/kv/walfs.go", "func (f *walFile) Sync() error                       { return f.inner.Sync() }\nfunc (f *walFile) SyncData() error                   { return f.inner.SyncData() }",
  "func (f *walFile) Sync() error                       { return nil }\nfunc (f *walFile) SyncData() error                   { return nil }",
  ["./internal/kv/"])
m("03-session-advance-discarded", "invariant 2: a session's advance is written to a batch that is then discarded",
  "engine/prepare.go", "	return e.store.Advance(b, sender, rcpt, adv...)",
  "	return e.store.Advance(e.db.NewBatch(), sender, rcpt, adv...)",
  ["./engine/ -run 'TestSessionsReloadedFromDiskEncryptAgain'", "./engine/ -run 'TestCrashDuringCampaignLosesNothingAndNeverReusesACounter'"])
m("04-idempotency-keys-shared", "tenancy: Idempotency-Keys shared across businesses",
  "internal/records/uploads.go", 'func idemKey(biz, key string) []byte { return append([]byte("tK"+biz+"\\x00"), key...) }',
  'func idemKey(biz, key string) []byte { return append([]byte("tK\\x00"), key...) }',
  ["./internal/api/ -run 'TestSingleSendIdempotencyKey|TestCampaignIdempotencyKeysAreTheBusinesss'"])
m("05-getmessage-no-business-check", "invariant 7: GET /v1/messages/{id} without its business check",
  "internal/api/messages.go", "	if errors.Is(err, records.ErrNotFound) || (err == nil && st.BusinessID != b.ID) {",
  "	if errors.Is(err, records.ErrNotFound) {",
  ["./internal/api/ -run 'TestTenancyEveryEndpoint'"])
m("06-shaping-delay-ignored", "invariant 9: the shaping delay is ignored (begin)",
  "engine/work.go", "			if at := e.opts.Shaper.Shape(it.p.PhoneNumberID, it.p.To, r.now); at.After(r.now) {",
  "			if at := e.opts.Shaper.Shape(it.p.PhoneNumberID, it.p.To, r.now); false && at.After(r.now) {",
  ["./engine/ -run 'TestPairRateDeliversEveryMessageInOrder'"])
m("07-template-variable-dropped", "bodies: a template variable's value is dropped",
  "internal/api/campaigns.go", "		sb.WriteString(v)\n", "		_ = v\n",
  ["./internal/api/ -run 'TestCampaignBodiesReachEveryDeviceFilledIn'"])
m("08-delay-holds-earlier-messages", "invariant 9: a delay holds the messages before it too and their tokens are not given back (the s11 stranding)",
  "engine/work.go", "		if after && !o.done && o.p.From == it.p.From {\n			o.held = true\n		}\n	}\n}\n\n// releaseUnsent gives back the Shaper's reservations of messages that did not\n// go in this run (retried, held, failed), so a later attempt is not charged\n// twice for one message.\nfunc (e *Engine) releaseUnsent(r *run) {\n",
  "		if (after || true) && !o.done && o.p.From == it.p.From {\n			o.held = true\n		}\n	}\n}\n\n// releaseUnsent gives back the Shaper's reservations of messages that did not\n// go in this run (retried, held, failed), so a later attempt is not charged\n// twice for one message.\nfunc (e *Engine) releaseUnsent(r *run) {\n	return\n",
  ["./engine/ -run 'TestPairRateDeliversEveryMessageInOrder'"])
m("09-paused-business-keeps-sending", "invariant 9 / issue 1.3: a paused business's queued messages are not held",
  "ratelimit/ratelimit.go", "	if b.Paused || l.restricted(pn, now) {\n		return now.Add(PauseRecheck)", "	if l.restricted(pn, now) {\n		return now.Add(PauseRecheck)",
  ["./engine/ -run 'TestPausedBusinessHoldsQueuedMessages'"])
m("10-enumeration-after-the-fact", "integrity: an enumerating batch is admitted and only then flagged",
  "ratelimit/ratelimit.go", "	if len(recipients) >= l.pol.SequentialBatchMin && seq > l.pol.SequentialMax {",
  "	if false && len(recipients) >= l.pol.SequentialBatchMin && seq > l.pol.SequentialMax {",
  ["./internal/api/ -run 'TestEnumeratingBatchIsRefusedBeforeEnqueue'"])
m("11-api-records-never-expire", "invariant 11: idempotent answers and campaign records are never swept",
  "internal/records/uploads.go", "func (u *Uploads) Sweep(now time.Time, limit int) (int, error) {\n", "func (u *Uploads) Sweep(now time.Time, limit int) (int, error) {\n	now = now.Add(-365 * 24 * time.Hour)\n",
  ["./internal/api/ -run 'TestPhoneNumbersLeaveWithTheirMessages'"])
m("12-webhook-expiry-ignored", "invariant 11: webhook statuses are kept past their message's TTL",
  "internal/webhook/webhook.go", "	if len(v) >= 9 && v[0] == entryMark {\n		return int64(binary.BigEndian.Uint64(v[1:9])), v[9:]",
  "	if len(v) >= 9 && v[0] == entryMark {\n		return 0, v[9:]",
  ["./internal/webhook/", "./internal/api/ -run 'TestPhoneNumbersLeaveWithTheirMessages'"])
m("13-webhook-backlog-unbounded", "invariant 12: a phone number's webhook backlog has no cap",
  "internal/webhook/webhook.go", "		if s.mu.backlog[c.PhoneNumberID] >= s.opts.MaxBacklog {", "		if false {",
  ["./internal/webhook/ -run 'TestWebhookBacklogIsBounded'"])
m("14-unknown-fields-ignored", "invariant 8: unknown fields are ignored",
  "internal/api/messages.go", "	dec.DisallowUnknownFields()\n", "",
  ["./internal/api/ -run 'TestUnknownFieldsAndParametersAreRefused'"])
m("15-stale-devices-not-requeried", "stale_devices: the device list is not queried again",
  "engine/transmit.go", "			e.store.ForgetDevices(r.extra, it.p.From, r.g.lease.Recipient)\n", "",
  ["./engine/ -run 'TestStaleDevicesDeliverOnceToEachCurrentDevice'"])
m("16-expired-messages-kept", "invariant 5: the retention sweep leaves expired queued messages",
  "engine/retention.go", "	expired, err := e.q.Expire(ctx, now, retentionBatch)", "	expired, err := e.q.Expire(ctx, now.Add(-365*24*time.Hour), retentionBatch)",
  ["./engine/ -run 'Retention|TTL|Expire'"])
m("17-payload-not-sealed", "invariant 6: the queue stores payloads unsealed",
  "queue/record.go", "	if sealed == nil {\n		return q.sealer.Seal(dst, m.Payload)\n	}", "	if sealed == nil {\n		return append(dst, m.Payload...)\n	}",
  ["./queue/ -run 'TestNoPlaintextInDataDir'", "./engine/ -run 'TestDataDirHoldsNoPlaintext'"])
m("18-recipient-messages-reordered", "invariant 3: a recipient's leased messages are worked in reverse",
  "engine/work.go", "	for i := range l.Messages {\n		it := &its[i]\n		it.msg = &l.Messages[i]",
  "	for i := range l.Messages {\n		it := &its[i]\n		it.msg = &l.Messages[len(l.Messages)-1-i]",
  ["./engine/ -run 'TestPerRecipientOrderWithManyMessages|TestPairRateDelivers'"])
m("19-readyz-ignores-the-platform", "/readyz answers 200 while the platform is unreachable",
  "internal/node/node.go", "	if p := n.platformErr.Load(); p != nil {", "	if p := n.platformErr.Load(); false && p != nil {",
  ["./internal/api/ -run 'TestReadyzSaysWhyWhileThePlatformIsUnreachable'"])
m("20-platform-error-labels-unbounded", "invariant 12: a platform's made-up codes become metric labels",
  "engine/transmit.go", '	return "other"\n}', '	return code\n}',
  ["./engine/ -run 'TestPlatformErrorLabelsAreBounded'"])
m("21-single-send-idempotency-forgotten", "a single send's Idempotency-Key answer is not remembered",
  "internal/api/messages.go", "		s.opts.Uploads.RememberSent(batch, b.ID, idem, reqHash, answer, now, records.IdemExpiry(now, ttl))\n", "",
  ["./internal/api/ -run 'TestSingleSendIdempotencyKey'"])
m("22-webhook-state-not-yours", "invariant 7: the routes of a phone number skip its owner check",
  "internal/api/api.go", "{ s.withPhone(ctx, b, pn, h) }",
  "{ h(ctx, b, pn) }",
  ["./internal/api/ -run 'TestWebhooksAreSignedAndDelivered|TestTenancyEveryEndpoint'"])
m("23-status-records-never-expire", "invariant 5/11: status records are not indexed for their retention",
  "internal/records/status.go", "	q.key = appendStatusExpiryKey(q.key[:0], expires.Add(StatusGrace).Unix(), id)\n	b.Set(q.key, nil, nil)\n", "",
  ["./internal/api/ -run 'TestPhoneNumbersLeaveWithTheirMessages'"])
m("24-limiter-token-without-a-wait", "invariant 9: the limiter lets a message go without a token when float refill leaves it just short",
  "ratelimit/ratelimit.go", "	if bk.tokens >= 1-tokenSlack {", "	if bk.tokens >= 1 {",
  ["./ratelimit/ -run 'TestTokenShortByFloatErrorIsAWholeToken'", "./engine/ -run 'TestPairRateProperty'"])

m("25-identity-check-ignored", "identity_check: a recipient device's changed identity key is trusted anyway",
  "engine/prepare.go", "	strict := e.opts.Directory != nil && e.opts.Directory.IdentityCheck(items[0].p.BusinessID)",
  "	strict := false && e.opts.Directory != nil && e.opts.Directory.IdentityCheck(items[0].p.BusinessID)",
  ["./engine/ -run 'TestIdentityCheckRefusesChangedIdentities'"])

m("26-webhook-crosses-businesses", "invariant 7: statuses go to whichever webhook is configured first",
  "internal/webhook/webhook.go", "	s.mu.Lock()\n	cfg := s.mu.configs[pn]\n	s.mu.Unlock()",
  "	s.mu.Lock()\n	cfg := s.mu.configs[pn]\n	for _, c := range s.mu.configs {\n		if c.URL < cfg.URL {\n			cfg = c\n		}\n	}\n	s.mu.Unlock()",
  ["./internal/api/ -run 'TestWebhooksCarryOnlyTheirBusinesssStatuses'"])

m("27-webhook-reply-read-whole", "invariant 12: a webhook's reply is read whatever its size",
  "internal/webhook/webhook.go", "		MaxResponseBodySize: opts.MaxReplyBytes, MaxConnsPerHost: 4,", "		MaxConnsPerHost: 4,",
  ["./internal/webhook/ -run 'TestHostileWebhookRepliesCannotHurtHerald'"])
m("28-webhook-ssrf-unguarded", "invariant 12: webhooks may reach loopback, private and metadata addresses",
  "internal/webhook/dial.go", "func (g guard) allowed(ip netip.Addr) bool {\n", "func (g guard) allowed(ip netip.Addr) bool {\n	return true\n",
  ["./internal/webhook/ -run 'TestWebhookDestinationsAreGuarded'"])
m("29-template-expansion-unbounded", "invariant 12: template expansion does not stop at the body limit",
  "internal/api/campaigns.go", "		if sb.Len()+len(v) > maxBodyUTF8Len {\n			return \"\", tooLong()\n		}\n", "",
  ["./internal/api/ -run 'TestFillTemplateStopsAtTheLimit|TestTemplateExpansionIsBounded'"])
m("30-replayed-events-applied", "invariant 12: a replayed signed event is applied again",
  "engine/events.go", "	if at, ok := e.seenEvents.Get(k); ok && now.Sub(at) < EventReplayWindow {", "	if at, ok := e.seenEvents.Get(k); false && ok && now.Sub(at) < EventReplayWindow {",
  ["./engine/ -run 'TestReplayedEventsAreIgnored'"])

m("31-one-queue-per-recipient", "invariant 12: one FIFO per recipient across businesses: one business's held messages hold another's",
  "heraldtype/heraldtype.go", 'func QueueRecipient(businessID, to string) string { return businessID + "\\x00" + to }', 'func QueueRecipient(businessID, to string) string { return to }',
  ["./engine/ -run 'TestOneBusinesssHeldMessagesNeverHoldAnothers'"])
m("32-queue-share-unchecked", "invariant 12: a business may fill the whole queue (no per-business share)",
  "internal/api/api.go", "	if used := s.opts.Queue.OwnerBytes(b.ID); used+adding > limit {", "	if used := s.opts.Queue.OwnerBytes(b.ID); false && used+adding > limit {",
  ["./internal/api/ -run 'TestOneBusinessCannotTakeAnothersQueueShare'"])
m("33-owner-bytes-not-returned", "invariant 12: acknowledged messages still count against their business's share",
  "queue/complete.go", "	q.addOwned(l.Messages, -1, true)\n", "",
  ["./queue/ -run 'TestQueueMatchesModel'", "./engine/ -run 'TestPerRecipientOrderWithManyMessages'"])
m("34-webhook-verification-skipped", "invariant 12: a webhook URL given with a verify_token is accepted whatever it answers",
  "internal/webhook/webhook.go", "	if got := strings.TrimSpace(string(resp.Body())); got != challenge {",
  "	if got := strings.TrimSpace(string(resp.Body())); false && got != challenge {",
  ["./internal/webhook/ -run 'TestWebhookVerificationHandshake'", "./internal/api/ -run 'TestWebhookVerifyAndDelete'"])
m("35-failure-code-of-old", "invariant 8: a status record an older Herald wrote answers with the old code (a media error in the Cloud API's table)",
  "heraldtype/heraldtype.go", "	case 131052:\n		return CodeExpired\n", "	case 131052:\n		return 131052\n",
  ["./heraldtype/ -run 'TestStoredCodesReadAsToday'"])
m("36-answer-outside-the-description", "invariant 8: the campaign view gains a field its OpenAPI description does not have",
  "internal/api/control.go", '		"failures":   failures,\n', '		"failures":   failures, "failures_v2": failures,\n',
  ["./internal/api/ -run 'TestCampaignViewWhenEveryMessageFails'"])
m("37-inbound-duplicate-decrypted", "invariant 10: a repeated inbound envelope is decrypted again (and, its key used, refused)",
  "internal/inbound/inbound.go", "		} else if dup {\n", "		} else if false && dup {\n",
  ["./internal/api/ -run 'TestInboundBadInput'"])
m("38-inbound-never-expires", "invariant 11: inbound messages (number, body) outlive their TTL",
  "internal/inbound/inbound.go", '	return r.opts.DB.SweepIndex("iX", hi, limit, func(b *pebble.Batch, id string) { b.Delete(msgKey(id), nil) }, false)\n',
  '	return r.opts.DB.SweepIndex("iX", hi, limit, func(b *pebble.Batch, id string) {}, false)\n',
  ["./internal/api/ -run 'TestPhoneNumbersLeaveWithTheirMessages'"])
m("39-stop-keyword-ignored", "opt-outs: a user's STOP is forwarded but opts nobody out",
  "ratelimit/optout.go", "		if strings.EqualFold(body, k) {\n", "		if false && strings.EqualFold(body, k) {\n",
  ["./internal/api/ -run 'TestOptOuts'"])
m("40-user-session-replaced", "one session per pair: Herald starts a new X3DH with a device that wrote to it first",
  "engine/prepare.go", "			if rec != nil && rec.SessionState() != nil && rec.SessionState().HasSenderChain() {\n",
  "			if false && rec != nil {\n",
  ["./internal/api/ -run 'TestInboundFromJavaScriptLibsignalUsers'"])
m("41-inbound-stale-session", "invariant 2 with both directions: inbound reads a session as last written whole, not as encryptions since advanced it (a counter is reused)",
  "internal/signal/respond.go", "func (s *Store) current(biz string, r Recipient, device uint32) (*record.Session, error) {\n	return s.Session(biz, r, device)\n}\n",
  "func (s *Store) current(biz string, r Recipient, device uint32) (*record.Session, error) {\n	v, ok, _ := s.db.GetCopy(key('S', biz, &r, device))\n	if !ok {\n		return nil, nil\n	}\n	plain, _ := s.sealer.Open(v)\n	return record.NewSessionFromBytes(plain, Serializer.Session, Serializer.State)\n}\n",
  ["./internal/api/ -run 'TestBothDirectionsShareOneSession'"])

m("42-pause-ignored-at-hand-off", "campaign control: a campaign paused after its messages were leased is still handed to the platform",
  "engine/transmit.go", "		if st != heraldtype.CampaignRunning {\n			s.r.stopCampaign(s.it, st)", "		if st == heraldtype.CampaignCanceled {\n			s.r.stopCampaign(s.it, st)",
  ["./engine/ -run 'TestPauseAndCancelRaceTheHandOff'"])
m("43-state-change-does-not-wait", "campaign control: a pause or cancel answers without waiting for the hand-off in progress",
  "internal/campaigns/control.go", "	e.hold.Lock()\n	defer e.hold.Unlock()\n", "",
  ["./engine/ -run 'TestPauseAndCancelRaceTheHandOff'"])
m("44-held-messages-re-leased", "campaign control: a paused campaign's messages are rescheduled, not parked (a re-leasing loop)",
  "engine/work.go", "	r.outcomes = append(r.outcomes, queue.Outcome{Seq: it.msg.Seq, Park: it.p.CampaignID})", "	r.outcomes = append(r.outcomes, queue.Outcome{Seq: it.msg.Seq, RetryAt: r.now.Add(20 * time.Millisecond)})",
  ["./engine/ -run 'TestPauseAndCancelRaceTheHandOff'"])
m("45-parked-messages-never-expire", "invariant 5: a parked message outlives its TTL (Expire does not look in the park range)",
  "queue/park.go", "	if q.inP[inPBucket(r)].Load() == 0 {\n		return \"\", false, nil", "	if true {\n		return \"\", false, nil",
  ["./queue/ -run 'TestParkHoldsUntilUnparkAndExpires'"])
m("46-cancel-unreported", "campaign control: a canceled message leaves the queue without its canceled status",
  "engine/work.go", "	u := records.Update{ID: it.msg.ID, Status: heraldtype.StatusCanceled, At: r.now, Recipient: it.p.To}\n	withQueued(&u, it)\n	r.ups = append(r.ups, u)\n", "",
  ["./engine/ -run 'TestPauseAndCancelRaceTheHandOff'"])
m("47-dry-run-counts-the-tier", "dry run: the preview admits for real (tier use written)",
  "ratelimit/dryrun.go", "	l := d.l\n	codes := make([]int, len(recipients))\n", "	l := d.l\n	if true {\n		return l.Admit(d.b, d.pn, recipients, now)\n	}\n	codes := make([]int, len(recipients))\n",
  ["./internal/api/ -run 'TestDryRunChangesNothing'"])
m("48-quiet-hours-ignored", "campaign control: quiet hours never hold a message",
  "internal/schedule/schedule.go", "	if !in {\n		return t\n	}", "	if !in || true {\n		return t\n	}",
  ["./internal/api/ -run 'TestCampaignControlLifecycle'"])
m("49-send-at-ignored", "campaign control: a scheduled campaign's messages are due at once",
  "internal/api/campaigns.go", "		due := a.plan.sendAt\n", "		due := time.Time{}\n",
  ["./internal/api/ -run 'TestCampaignControlLifecycle'"])
m("50-resume-leaves-messages-parked", "campaign control: a resume does not bring the parked messages back",
  "internal/api/control.go", "		case to != heraldtype.CampaignPaused:\n", "		case to == heraldtype.CampaignCanceled:\n",
  ["./internal/api/ -run 'TestCampaignControlLifecycle'"])

m("51-parked-cancel-unreported", "campaign control: a paused campaign's parked messages are canceled without their statuses",
  "engine/work.go", "			e.statuses.SubmitWait(ups)\n			return ctx.Err()\n", "			return ctx.Err()\n",
  ["./internal/api/ -run 'TestCampaignControlLifecycle'"])

m("52-cluster-tier-per-node", "cluster: each node counts the tier alone (a business gets the tier on every node)",
  "internal/node/node.go", "			lo.Shared = clusterTier{n.cluster.c.Tier}\n", "",
  ["./internal/node/ -run 'TestClusterTierExactAcrossNodes'"])
m("53-cluster-ack-at-intake", "cluster: a message is acked to JetStream when taken into the local queue, not when settled (a dead node's queue is lost)",
  "internal/node/cluster.go", "	cn.intaken.Add(int64(len(qm)))\n", "	cn.intaken.Add(int64(len(qm)))\n	for _, jm := range msgs {\n		_ = jm.Ack()\n	}\n",
  ["./internal/node/ -run 'TestClusterNodeCutOffMidCampaign'"])
m("55-cluster-webhooks-per-node", "cluster: a webhook is known only to the node it was set on (the others' statuses never reach it)",
  "internal/node/cluster.go", "return put(\"w.\"+pn, sealed) }", "_ = put; return nil }",
  ["./internal/node/ -run 'TestClusterCampaignAcrossNodes'"])
m("56-cluster-pause-per-node", "cluster: a pause holds only on the node asked (the partitions' owners go on sending)",
  "internal/node/cluster_campaigns.go", "	if _, err := c.CampaignsBucket.Put(ctx, \"s.\"+id, v); err != nil {", "	if true {\n		return nil\n	}\n	if _, err := c.CampaignsBucket.Put(ctx, \"s.\"+id, v); err != nil {",
  ["./internal/node/ -run 'TestClusterCampaignAcrossNodes'"])
m("54-cluster-late-renewal-drops-lease", "cluster: a lease renewal refused because an earlier, timed-out one landed drops the partition (taken again, every session rebuilt)",
  "internal/cluster/owner.go", "				case gerr == nil && string(e.Value()) == string(c.leaseValue()):", "				case false && gerr == nil && string(e.Value()) == string(c.leaseValue()):",
  ["./internal/cluster/ -run 'TestLateRenewalIsAdopted'"])
m("57-cluster-quality-per-node", "cluster: each node rates a phone number on its own signals only",
  "internal/node/cluster_quality.go", "	n.Limits.SetRemoteSignals(q.of)\n", "",
  ["./internal/node/ -run 'TestClusterQualityAndOptOutsAcrossNodes'"])
m("58-cluster-optouts-per-node", "cluster: an opt-out is known only to the node that took it",
  "internal/node/cluster.go", "	if err := n.watchShared(c.OptOuts, \"opt-out\", n.applyOptOut); err != nil {", "	if err := n.watchShared(c.OptOuts, \"opt-out\", func(jetstream.KeyValueEntry) error { return nil }); err != nil {",
  ["./internal/node/ -run 'TestClusterQualityAndOptOutsAcrossNodes'"])
m("59-cluster-inbound-not-routed", "cluster: inbound envelopes are decrypted by the node the platform posted to, not by their user's partition owner",
  "internal/node/node.go", "		ao.InboundRoute = n.cluster.routeInbound\n", "",
  ["./internal/node/ -run 'TestClusterInboundAnyNode'"])
m("60-cluster-prekeys-not-shared", "cluster: prekeys stay on the node that made them",
  "internal/node/cluster_inbound.go", "		_, err := c.PreKeys.Put(ctx, key, sealed)\n		return err", "		_ = ctx\n		return nil",
  ["./internal/node/ -run 'TestClusterInboundAnyNode'"])
m("61-cluster-idempotency-per-node", "cluster: idempotent answers and upload progress stay on the node that took the request (a retry on another node is accepted again)",
  "internal/node/cluster_campaigns.go", "	n.Uploads.SetShared(sharedRecords{c.Idem})\n", "",
  ["./internal/node/ -run 'TestClusterIdempotencyAcrossNodes'"])
m("62-cluster-idempotency-hold-per-node", "cluster: an Idempotency-Key is held only on the node working it (a quick retry elsewhere runs beside it)",
  "internal/node/node.go", "		ao.SharedHold = n.cluster.sharedHold\n", "",
  ["./internal/node/ -run 'TestClusterIdempotencyAcrossNodes'"])
m("63-cluster-taken-back-trusts-any-claim", "cluster: a partition taken back keeps its sessions whoever worked it meanwhile (stale sessions reused)",
  "internal/cluster/owner.go", "	case last != \"\" && string(e.Value()) == last:", "	case true || last != \"\" && string(e.Value()) == last:",
  ["./internal/cluster/ -run 'TestTakenBackWithoutAnotherWorker'"])
m("64-cluster-inbound-lookup-local", "cluster: a user's message is found (and marked read) only on the node that decrypted it",
  "internal/node/node.go", "		ao.InboundElsewhere = inboundElsewhere{n.cluster}\n", "",
  ["./internal/node/ -run 'TestClusterInboundAnyNode'"])
m("65-cluster-retry-new-ids", "cluster: a resumed upload draws new message ids (a batch JetStream stored before its node was cut is published again under other ids: delivered twice)",
  "internal/api/campaigns.go", "if sd, err := hex.DecodeString(a.prog.IDSeed); err == nil && len(sd) == len(a.seed) {",
  "if sd, err := hex.DecodeString(a.prog.IDSeed); false && err == nil && len(sd) == len(a.seed) {",
  ["./internal/node/ -run 'TestClusterRetryAfterCutBetweenAckAndRecord'"])
m("66-cluster-send-intent-ignored", "cluster: a single send's retry ignores the id its cut attempt published (delivered twice)",
  "internal/api/messages.go", "			intentID = string(v[32:])", "			_ = v",
  ["./internal/api/ -run 'TestIdempotencyIntents'", "./internal/node/ -run 'TestClusterRetryAfterCutBetweenAckAndRecord'"])
m("67-cluster-tier-peaks-per-node", "cluster: tier upgrades judged on the deciding node's own peaks (which a cluster never fills: no upgrade)",
  "ratelimit/quality.go", "	if sp, ok := l.opts.Shared.(SharedPeaks); ok {", "	if sp, ok := l.opts.Shared.(SharedPeaks); false && ok {",
  ["./ratelimit/ -run 'TestTierUpgradeOnTheSharedPeak'", "./internal/node/ -run 'TestClusterTierExactAcrossNodes'"])
m("68-cluster-ack-before-counts", "cluster: deliveries acked before the node's campaign counts that include them are stored (a node that dies then takes those counts with it: the campaign never adds up)",
  "internal/node/cluster.go", "	if cn.camps != nil && len(b.camps) > 0 {\n		slices.Sort(b.camps)", "	if false && cn.camps != nil && len(b.camps) > 0 {\n		slices.Sort(b.camps)",
  ["./internal/node/ -run 'TestClusterCountsStoredBeforeAcks|TestClusterNodeCutOffMidCampaign'"])

only = sys.argv[1:]
missing = []
for name, desc, path, old, new, tests, count in M:
    if only and name not in only: continue
    src = open(path).read()
    if src.count(old) < 1:
        print("NOT FOUND", name); missing.append(name); continue
    # Against the file as it is now (committed or not): a diff from git would
    # be against the index and carry uncommitted edits into the patch.
    diff = ''.join(difflib.unified_diff(src.splitlines(True), src.replace(old, new, 1).splitlines(True), 'a/' + path, 'b/' + path))
    hdr = "# mutant: %s\n# %s\n" % (name, desc) + "".join("# test: %s\n" % t for t in tests)
    open('mutants/%s.patch' % name,'w').write(hdr + diff)
    print("wrote", name)
if missing:
    sys.exit("the code these mutants change has moved: " + ", ".join(missing))
