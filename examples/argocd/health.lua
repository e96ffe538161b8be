-- Argo CD health check for berth.dev/Registry: reads the operator's conditions.
-- Install under argocd-cm data key `resource.customizations.health.berth.dev_Registry`
-- (argocd-cm.yaml in this directory does exactly that).
local hs = { status = "Progressing", message = "Waiting for the operator" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
if obj.status.observedGeneration ~= nil and obj.metadata.generation ~= nil
    and obj.status.observedGeneration < obj.metadata.generation then
  hs.message = "The operator has not seen the latest spec yet"
  return hs
end
local ready, degraded
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Ready" then ready = c end
  if c.type == "Degraded" then degraded = c end
end
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = degraded.reason .. ": " .. (degraded.message or "")
elseif ready ~= nil and ready.reason == "ScaledToZero" then
  -- replicas: 0 is a choice, not a wait: nothing is coming.
  hs.status = "Suspended"
  hs.message = ready.message or "Scaled to zero"
elseif ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
elseif ready ~= nil then
  hs.message = ready.reason .. ": " .. (ready.message or "")
end
return hs
