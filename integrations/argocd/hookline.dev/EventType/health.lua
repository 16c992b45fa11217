-- Argo CD health of a Hookline EventType (an entry of its namespace's event catalog), from the
-- Ready condition Hookline writes: the schema compiles, the example matches it, and no older
-- EventType of the namespace names the same type. One that is not Ready checks nothing.
local hs = { status = "Progressing", message = "Waiting for Hookline to check the EventType" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and (obj.status.observedGeneration == nil or obj.status.observedGeneration < generation) then
  hs.message = "Waiting for Hookline to check generation " .. generation
  return hs
end
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "Ready" then
    if condition.status == "True" then
      return { status = "Healthy", message = condition.message }
    end
    -- InvalidSchema, InvalidExample, DuplicateType: the message names the problem.
    return { status = "Degraded", message = condition.message }
  end
end
return hs
