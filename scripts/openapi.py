# Generates internal/api/openapi.json (python3 scripts/openapi.py > internal/api/openapi.json):
# the OpenAPI 3.1 description of the business and admin APIs, checked by the API tests.
import json
def ref(n): return {"$ref": "#/components/schemas/"+n}
def obj(props, required=(), extra=False, desc=None):
    o={"type":"object","properties":props,"additionalProperties":extra}
    if required: o["required"]=list(required)
    if desc: o["description"]=desc
    return o
S=lambda **k: dict(type="string",**k)
I=lambda **k: dict(type="integer",**k)
B={"type":"boolean"}
def resp(desc, schema, headers=None):
    r={"description":desc,"content":{"application/json":{"schema":schema}}}
    if headers: r["headers"]=headers
    return r
def errs(*codes):
    d={"400":"malformed request, unknown field or parameter, invalid value","401":"missing, unknown or revoked token",
       "403":"business restricted (131048)","404":"not found, or not yours","405":"method not allowed (Allow lists those the path takes)",
       "408":"request body stalled","409":"Idempotency-Key conflict","413":"request body or line too large",
       "429":"at capacity, the business's queue share is full, or the tier limit (Retry-After)","503":"storage failure (Retry-After)",
       "507":"disk full (Retry-After)"}
    return {c:{"$ref":"#/components/responses/E"+c} for c in codes}
trace={"X-FB-Trace-ID":{"$ref":"#/components/headers/Trace"}}
pn={"name":"phone_number_id","in":"path","required":True,"schema":S()}
bearer=[{"business":[]}]
admin=[{"admin":[]}]
ts=S(pattern="^[0-9]+$",description="unix seconds, as a string (as the Cloud API writes it)")
rfc=S(format="date-time",description="RFC 3339, UTC, milliseconds")
schemas={
 "Error": obj({"error": obj({
    "message":S(),"type":S(),"code":I(),"details":S(),
    "error_data":obj({"messaging_product":S(const="whatsapp"),"details":S()},["messaging_product","details"]),
    "fbtrace_id":S(description="this request's trace id (also X-FB-Trace-ID and the trace_id of its log lines)")},
    ["message","type","code","error_data","fbtrace_id"])},["error"]),
 "StatusError": obj({"code":I(),"title":S(),"message":S(),"error_data":obj({"details":S()},["details"])},["code","title","message","error_data"]),
 "SendMessage": obj({"messaging_product":S(const="whatsapp"),"recipient_type":S(const="individual"),
    "to":S(minLength=1,description="the recipient's phone number (8–15 digits once +, spaces, dashes and parentheses are removed)"),
    "type":S(const="text"),"text":obj({"body":S(minLength=1,maxLength=4096),"preview_url":B},["body"]),
    "ttl_seconds":I(minimum=30,maximum=2592000)},["messaging_product","to","text"]),
 "SendResult": obj({"messaging_product":S(const="whatsapp"),
    "contacts":{"type":"array","items":obj({"input":S(),"wa_id":S(pattern="^[0-9]{8,15}$")},["input","wa_id"])},
    "messages":{"type":"array","items":obj({"id":S()},["id"])}},["messaging_product","contacts","messages"]),
 "MarkRead": obj({"messaging_product":S(const="whatsapp"),"status":S(const="read"),"message_id":S(minLength=1)},["messaging_product","status","message_id"],
    desc="Marks a message a user sent the business read; a read receipt goes to the platform."),
 "MarkReadResult": obj({"success":{"const":True}},["success"]),
 "Recipient": obj({"to":S(),"vars":{"type":"object","additionalProperties":S()}},["to"]),
 "QuietHours": obj({"start":S(pattern="^[0-2][0-9]:[0-5][0-9]$"),"end":S(pattern="^[0-2][0-9]:[0-5][0-9]$")},["start","end"],
    desc="a daily window in each recipient's local time (from the number's country code; the westernmost zone of a country with several; UTC when none is known) in which nothing is sent; start after end wraps past midnight"),
 "CampaignHeader": obj({"name":S(),"template":obj({"body":S(minLength=1)},["body"]),"ttl_seconds":I(minimum=30,maximum=2592000),
    "send_at":S(format="date-time",description="RFC 3339; at most 30 days ahead; the TTL counts from it"),"quiet_hours":ref("QuietHours")},["template"]),
 "Campaign": obj({"name":S(),"template":obj({"body":S(minLength=1)},["body"]),"ttl_seconds":I(minimum=30,maximum=2592000),
    "send_at":S(format="date-time",description="RFC 3339; at most 30 days ahead; the TTL counts from it"),"quiet_hours":ref("QuietHours"),
    "recipients":{"type":"array","items":ref("Recipient")}},["template","recipients"]),
 "Rejection": obj({"line":I(minimum=1),"to":S(),"code":I(),"message":S()},["line","to","code","message"]),
 "CampaignResult": obj({"campaign_id":S(),"accepted":I(minimum=0),"rejected":{"type":"array","items":ref("Rejection")},
    "rejected_count":I(minimum=0),"rejected_truncated":B},["campaign_id","accepted","rejected","rejected_count"]),
 "DryRunResult": obj({"campaign_id":S(const="",description="empty: a dry run makes no campaign"),"accepted":I(minimum=0),"rejected":{"type":"array","items":ref("Rejection")},
    "rejected_count":I(minimum=0),"rejected_truncated":B,"dry_run":{"const":True},
    "integrity":obj({"flags":{"type":"array","items":ref("Flag")},"tier_remaining":I(minimum=-1,description="new unique recipients the tier would still allow after this upload; -1: unlimited")},["flags","tier_remaining"])},
    ["campaign_id","accepted","rejected","rejected_count","dry_run","integrity"]),
 "StatusCounts": obj({k:I(minimum=0) for k in ["queued","sent","delivered","read","failed","canceled"]},["queued","sent","delivered","read","failed","canceled"]),
 "StatusTotals": obj({k:I(minimum=0) for k in ["sent","delivered","read","failed","canceled"]},["sent","delivered","read","failed","canceled"]),
 "CampaignView": obj({"campaign_id":S(),"name":S(),"phone_number_id":S(),
    "state":S(enum=["scheduled","running","paused","canceled","done"],description="canceled and done are final"),
    "accepted":I(minimum=0),"rejected":I(minimum=0),
    "counts":ref("StatusCounts"),"totals":ref("StatusTotals"),
    "failures":{"type":"object","additionalProperties":I(minimum=0),"description":"failed messages by code"},
    "created_at":rfc,"started_at":rfc,"finished_at":rfc,"rate_per_second":{"type":"number","minimum":0},
    "send_at":rfc,"quiet_hours":ref("QuietHours"),"ttl_seconds":I(minimum=30,maximum=2592000),"expires_at":rfc},
    ["campaign_id","name","phone_number_id","state","accepted","rejected","counts","totals","failures","created_at"]),
 "CampaignList": obj({"data":{"type":"array","items":ref("CampaignView")},
    "paging":obj({"cursors":obj({"after":S()},["after"]),"next":S(description="the next page's path, while more may follow")})},["data","paging"]),
 "MessageView": obj({"id":S(),"direction":S(enum=["outbound","inbound"]),
    "status":S(enum=["queued","sent","delivered","read","failed","canceled","received"]),"phone_number_id":S(),"campaign_id":S(),
    "from":S(pattern="^[0-9]{8,15}$",description="inbound: the user who wrote"),"timestamp":ts,"type":S(const="text"),
    "text":obj({"body":S()},["body"]),
    "history":{"type":"array","items":obj({"status":S(),"timestamp":ts,"errors":{"type":"array","items":ref("StatusError")}},["status","timestamp"])}},
    ["id","direction","status","phone_number_id","history"],
    desc="An outbound message's status history, or (direction inbound) a message a user sent the business, with its body until its TTL."),
 "WebhookConfig": obj({"url":S(minLength=1),"secret":S(minLength=1),"verify_token":S()},["url","secret"]),
 "WebhookSet": obj({"success":{"const":True},"phone_number_id":S(),"url":S(),"verified":B},["success","phone_number_id","url","verified"]),
 "WebhookState": obj({"url":S(),"backlog":I(minimum=0),"last_error":S(),"last_error_at":rfc,"next_attempt_at":rfc},["url","backlog"]),
 "Success": obj({"success":{"const":True},"phone_number_id":S()},["success"]),
 "Flag": obj({"name":S(),"value":{"type":"number"},"threshold":{"type":"number"},"since":rfc,"refused_batches":I(minimum=0)},["name","value","threshold","since"]),
 "Integrity": obj({"tier":ref("Tier"),"quality":S(enum=["high","medium","low"]),"paused":B,"unique_recipients_24h":I(minimum=0),
    "mps":I(minimum=0),"flags":{"type":"array","items":ref("Flag")}},["tier","quality","paused","unique_recipients_24h","mps","flags"]),
 "Tier": S(enum=["250","2k","10k","100k","unlimited"]),
 "NewBusiness": obj({"name":S(),"phone_numbers":{"type":"array","items":S()},"tier":ref("Tier"),"mps":I(minimum=0,maximum=1000),"identity_check":B},["name","phone_numbers"]),
 "NewBusinessResult": obj({"business_id":S(),"token":S(),"token_id":S(),"phone_number_ids":{"type":"array","items":S()}},["business_id","token","token_id","phone_number_ids"]),
 "PatchBusiness": obj({"tier":ref("Tier"),"mps":I(minimum=0,maximum=1000),"paused":B,"max_queued_bytes":I(minimum=0),
    "stop_keywords":{"type":"array","maxItems":20,"items":S(minLength=1,maxLength=32),"description":"whole-message keywords that opt a user out; [] restores STOP, UNSUBSCRIBE, ALTO"}}),
 "Business": obj({"business_id":S(),"name":S(),"tier":ref("Tier"),"mps":I(),"paused":B,"identity_check":B,
    "phone_numbers":{"type":"array","items":obj({"phone_number_id":S(),"display_phone_number":S()},["phone_number_id","display_phone_number"])},
    "token_ids":{"type":"array","items":S()},"max_queued_bytes":I(minimum=0),"max_queued_bytes_default":B,"queued_bytes":I(minimum=0),
    "stop_keywords":{"type":"array","items":S()}},
    ["business_id","name","tier","mps","paused","identity_check","phone_numbers","token_ids","max_queued_bytes","max_queued_bytes_default","queued_bytes","stop_keywords"]),
 "OptOuts": obj({"count":I(minimum=0),"optouts":{"type":"array","items":obj({"id":S(pattern="^[0-9a-f]+$",description="keyed HMAC of the user's number"),"since":rfc},["id","since"])}},["count","optouts"]),
 "BusinessList": obj({"businesses":{"type":"array","items":ref("Business")}},["businesses"]),
 "NewToken": obj({"token":S(),"token_id":S()},["token","token_id"]),
 "Revoked": obj({"revoked":S(),"at":rfc},["revoked","at"]),
 "NewPhoneNumber": obj({"phone_number":S()},["phone_number"]),
 "PhoneNumberID": obj({"phone_number_id":S()},["phone_number_id"]),
}
def op(summary, ok, codes, sec=bearer, body=None, params=(), opid=None, desc=None):
    o={"operationId":opid,"summary":summary,"security":sec,"responses":{"200":ok, **errs(*codes)}}
    if desc: o["description"]=desc
    if params: o["parameters"]=list(params)
    if body: o["requestBody"]=body
    return o
jbody=lambda n:{"required":True,"content":{"application/json":{"schema":ref(n)}}}
common=("400","401","404","405")
idem={"name":"Idempotency-Key","in":"header","required":False,"schema":S(maxLength=256)}
paths={
 "/v1/{phone_number_id}/messages":{"parameters":[pn],"post":op("Send one text message, or mark a user's message read",
    resp("accepted (or marked read)",{"oneOf":[ref("SendResult"),ref("MarkReadResult")]},trace),
    common+("403","408","409","413","429","503","507"),body={"required":True,"content":{"application/json":{"schema":{"oneOf":[ref("SendMessage"),ref("MarkRead")]}}}},
    params=[idem],opid="sendMessage")},
 "/v1/{phone_number_id}/campaigns":{"parameters":[pn],
    "get":op("The phone number's campaigns, newest first",resp("a page of campaigns",ref("CampaignList"),trace),common,opid="listCampaigns",
      params=[{"name":"limit","in":"query","required":False,"schema":I(minimum=1,maximum=100,default=25)},
              {"name":"after","in":"query","required":False,"schema":S(),"description":"paging.cursors.after of the previous page"}]),
    "post":op("Upload a campaign",resp("the upload's result: every line accepted or rejected (with dry_run: what a real upload would answer, and the integrity it would leave; nothing written)",
      {"oneOf":[ref("CampaignResult"),ref("DryRunResult")]},trace),
    common+("403","408","409","413","429","503","507"),opid="uploadCampaign",
    params=[idem,{"name":"dry_run","in":"query","required":False,"schema":S(enum=["true","false","1","0"])}],
    desc="JSON, or with Content-Type application/x-ndjson a first line holding the header (name, template, ttl_seconds, send_at, quiet_hours) and one recipient object per line. 409 also: the campaign was canceled during its upload.",
    body={"required":True,"content":{"application/json":{"schema":ref("Campaign")},"application/x-ndjson":{"schema":S(description="a CampaignHeader line, then one Recipient per line")}}})},
 "/v1/campaigns/{campaign_id}":{"parameters":[{"name":"campaign_id","in":"path","required":True,"schema":S()}],
    "get":op("A campaign's progress",resp("the campaign",ref("CampaignView"),trace),common,opid="getCampaign")},
 "/v1/campaigns/{campaign_id}/pause":{"parameters":[{"name":"campaign_id","in":"path","required":True,"schema":S()}],
    "post":op("Pause: nothing more of the campaign is handed to the platform until resumed",resp("the campaign after the change",ref("CampaignView"),trace),common+("409","503"),opid="pauseCampaign",
      desc="409: the campaign is canceled or done. The answer comes once no hand-off to the platform of the campaign is in progress.")},
 "/v1/campaigns/{campaign_id}/resume":{"parameters":[{"name":"campaign_id","in":"path","required":True,"schema":S()}],
    "post":op("Resume a paused campaign",resp("the campaign after the change",ref("CampaignView"),trace),common+("409","503"),opid="resumeCampaign",desc="409: the campaign is canceled or done.")},
 "/v1/campaigns/{campaign_id}/cancel":{"parameters":[{"name":"campaign_id","in":"path","required":True,"schema":S()}],
    "post":op("Cancel: every message not yet sent ends canceled; none is sent after the answer",resp("the campaign after the change",ref("CampaignView"),trace),common+("409","503"),opid="cancelCampaign",
      desc="409: the campaign is canceled or done.")},
 "/v1/messages/{message_id}":{"parameters":[{"name":"message_id","in":"path","required":True,"schema":S()}],
    "get":op("A message's status history",resp("the message",ref("MessageView"),trace),common,opid="getMessage")},
 "/v1/{phone_number_id}/webhook":{"parameters":[pn],
    "put":op("Set the phone number's webhook",resp("set (after the verification handshake when verify_token is given)",ref("WebhookSet"),trace),common+("413","503","507"),body=jbody("WebhookConfig"),opid="putWebhook"),
    "get":op("The webhook and its backlog (never the secret)",resp("the webhook",ref("WebhookState"),trace),common,opid="getWebhook"),
    "delete":op("Remove the webhook",resp("removed",ref("Success"),trace),common+("503",),opid="deleteWebhook")},
 "/v1/{phone_number_id}/integrity":{"parameters":[pn],"get":op("Tier, quality and the flags behind them",resp("integrity",ref("Integrity"),trace),common,opid="getIntegrity")},
 "/v1/{phone_number_id}/optouts":{"parameters":[pn],"get":op("Users who opted out of this business (count and keyed ids, never numbers; at most 1,000 listed)",
    resp("opt-outs",ref("OptOuts"),trace),common,opid="getOptOuts")},
 "/v1/{phone_number_id}/optouts/{wa_id}":{"parameters":[pn,{"name":"wa_id","in":"path","required":True,"schema":S()}],
    "delete":op("The user opted back in through another channel",resp("deleted",ref("MarkReadResult"),trace),common+("503","507"),opid="deleteOptOut")},
 "/admin/v1/businesses":{
    "post":op("Create a business (its token is shown once)",resp("created",ref("NewBusinessResult"),trace),("400","401","405","413","503","507"),sec=admin,body=jbody("NewBusiness"),opid="createBusiness"),
    "get":op("Every business (token ids, never tokens)",resp("the businesses",ref("BusinessList"),trace),("400","401","405"),sec=admin,opid="listBusinesses")},
 "/admin/v1/businesses/{business_id}":{"parameters":[{"name":"business_id","in":"path","required":True,"schema":S()}],
    "get":op("One business",resp("the business",ref("Business"),trace),common,sec=admin,opid="getBusiness"),
    "patch":op("Change tier, mps, pause, queue share",resp("the business after the change",ref("Business"),trace),common+("413","503","507"),sec=admin,body=jbody("PatchBusiness"),opid="patchBusiness")},
 "/admin/v1/businesses/{business_id}/tokens":{"parameters":[{"name":"business_id","in":"path","required":True,"schema":S()}],
    "post":op("A new token (shown once)",resp("the token",ref("NewToken"),trace),common+("503","507"),sec=admin,opid="newToken")},
 "/admin/v1/businesses/{business_id}/tokens/{token_id}":{"parameters":[{"name":"business_id","in":"path","required":True,"schema":S()},{"name":"token_id","in":"path","required":True,"schema":S()}],
    "delete":op("Revoke a token",resp("revoked",ref("Revoked"),trace),common+("503","507"),sec=admin,opid="revokeToken")},
 "/admin/v1/businesses/{business_id}/phone_numbers":{"parameters":[{"name":"business_id","in":"path","required":True,"schema":S()}],
    "post":op("Add a phone number",resp("added",ref("PhoneNumberID"),trace),common+("413","503","507"),sec=admin,body=jbody("NewPhoneNumber"),opid="addPhoneNumber")},
}
responses={}
for c,d in {"400":"malformed request, unknown field or parameter (named), or invalid value","401":"missing, unknown or revoked token",
       "403":"business restricted (131048)","404":"not found, or not yours","405":"method not allowed (Allow lists those the path takes)",
       "408":"request body stalled","409":"Idempotency-Key in flight or reused for another body","413":"request body or line too large",
       "429":"Herald at capacity, the business's queue share full, or the tier limit (Retry-After)","503":"storage failure (Retry-After)",
       "507":"disk full (Retry-After)"}.items():
    responses["E"+c]={"description":d,"headers":trace,"content":{"application/json":{"schema":ref("Error")}}}
doc={"openapi":"3.1.0",
 "info":{"title":"Herald business and admin API","version":"1","description":"Business API (Cloud API shape) and admin API of Herald. Every answer carries X-FB-Trace-ID. Error codes: see the README's table."},
 "servers":[{"url":"http://127.0.0.1:8080"}],
 "security":bearer,
 "paths":paths,
 "components":{"schemas":schemas,"responses":responses,
   "headers":{"Trace":{"description":"this request's trace id","schema":S()}},
   "securitySchemes":{"business":{"type":"http","scheme":"bearer","description":"a business token"},
                      "admin":{"type":"http","scheme":"bearer","description":"the admin token (--admin-token, <data>/admin-token)"}}}}
print(json.dumps(doc,indent=1))
