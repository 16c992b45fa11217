-- Argo CD health of a Hookline FailedEvent (an event Hookline could not deliver; Argo CD shows
-- it under its WebhookSubscription, whose child it is). It stays Degraded until it is replayed
-- successfully, which deletes it.
local failure = (obj.spec ~= nil and obj.spec.failure) or {}
local what = "Not delivered to " .. tostring(obj.spec ~= nil and obj.spec.subscription or "its subscription")
  .. ": " .. tostring(failure.reason or "failed") .. " after " .. tostring(failure.attempts or 0) .. " attempts"
if failure.lastStatusCode ~= nil then
  what = what .. ", last HTTP " .. failure.lastStatusCode
end
if failure.lastError ~= nil then
  what = what .. ", last error: " .. failure.lastError
end
local replay = obj.status ~= nil and obj.status.replay or nil
if replay == nil then
  return { status = "Degraded", message = what }
end
local detail = replay.message or replay.outcome
if replay.outcome == "Pending" then
  return { status = "Progressing", message = "Replay: " .. detail }
end
if replay.outcome == "SubscriptionSuspended" then
  return { status = "Suspended", message = "Replay waits: " .. detail }
end
-- Failed, SubscriptionGone.
return { status = "Degraded", message = "Replay: " .. detail .. " (" .. what .. ")" }
