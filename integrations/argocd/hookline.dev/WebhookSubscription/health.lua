-- Argo CD health of a Hookline WebhookSubscription, from the conditions Hookline writes.
local hs = { status = "Progressing", message = "Waiting for Hookline to observe the subscription" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and (obj.status.observedGeneration == nil or obj.status.observedGeneration < generation) then
  hs.message = "Waiting for Hookline to observe generation " .. generation
  return hs
end
local conditions = {}
for _, condition in ipairs(obj.status.conditions) do
  conditions[condition.type] = condition
end
local ready, verified, healthy = conditions["Ready"], conditions["EndpointVerified"], conditions["Healthy"]
if ready == nil then
  return hs
end
if ready.status == "True" then
  -- Delivering, but the endpoint keeps failing.
  if healthy ~= nil and healthy.status == "False" then
    return { status = "Degraded", message = healthy.message }
  end
  return { status = "Healthy", message = ready.message }
end
if ready.reason == "Suspended" then
  return { status = "Suspended", message = ready.message }
end
if ready.reason == "AwaitingValidation" then
  -- The handshake waits for the endpoint, unless the endpoint cannot be reached at all.
  if verified ~= nil and (verified.reason == "EndpointBlocked" or verified.reason == "ValidationFailed") then
    return { status = "Degraded", message = verified.message }
  end
  if verified ~= nil and verified.message ~= nil then
    return { status = "Progressing", message = verified.message }
  end
  return { status = "Progressing", message = ready.message }
end
-- InvalidSpec, Disabled (410 Gone, or failing for disableAfter), Expired, SigningSecretMissing.
return { status = "Degraded", message = ready.message }
