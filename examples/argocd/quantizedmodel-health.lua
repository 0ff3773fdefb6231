-- Argo CD health of a qfleet.dev QuantizedModel, from the status the operator writes
-- (phase, observedGeneration, conditions Ready, Progressing, Degraded, RolledBack).
-- argocd-cm.yaml embeds this script as resource.customizations.health.qfleet.dev_QuantizedModel.
local hs = {}

local function find(conditions, kind)
  if conditions == nil then
    return nil
  end
  for _, condition in ipairs(conditions) do
    if condition.type == kind then
      return condition
    end
  end
  return nil
end

local function is_true(condition)
  return condition ~= nil and condition.status == "True"
end

local function text(condition, fallback)
  if condition ~= nil and condition.message ~= nil and condition.message ~= "" then
    return condition.message
  end
  return fallback
end

local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report a status"
  return hs
end

local generation = obj.metadata.generation
local observed = status.observedGeneration
if observed == nil or (generation ~= nil and observed < generation) then
  hs.status = "Progressing"
  if generation ~= nil then
    hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  else
    hs.message = "Waiting for the operator to observe the model"
  end
  return hs
end

local conditions = status.conditions
local ready = find(conditions, "Ready")
local progressing = find(conditions, "Progressing")
local degraded = find(conditions, "Degraded")
local rolled_back = find(conditions, "RolledBack")
local phase = status.phase

-- Failures that need someone to act: nothing to serve, an invalid spec, a failed Job or accuracy
-- gate, a rollout that was rolled back to the last good model.
if phase == "Failed" or phase == "Blocked" then
  hs.status = "Degraded"
  hs.message = phase .. ": " .. text(degraded, text(ready, "see the model's conditions"))
  return hs
end
if is_true(rolled_back) then
  hs.status = "Degraded"
  hs.message = "Rolled back: " .. text(rolled_back, rolled_back.reason or "")
  return hs
end
if is_true(degraded) and (degraded.reason == "JobFailed" or degraded.reason == "GateFailed"
    or degraded.reason == "InvalidSpec") then
  hs.status = "Degraded"
  hs.message = text(degraded, degraded.reason)
  return hs
end

-- A quantization Job runs (or waits for a slot), or new replicas roll out.
if is_true(progressing) then
  hs.status = "Progressing"
  hs.message = text(progressing, progressing.reason or "Progressing")
  return hs
end

-- Serving, but not as specified: a tier without nodes, or one serving an older or FP32 model.
-- Capacity alone (MaxReplicasReached: demand above maxReplicas) is load, not a broken model.
if is_true(degraded) and degraded.reason ~= "MaxReplicasReached" then
  hs.status = "Degraded"
  hs.message = text(degraded, degraded.reason or "Degraded")
  return hs
end

if is_true(ready) then
  hs.status = "Healthy"
  hs.message = text(ready, "Ready")
  return hs
end
if is_true(degraded) then
  hs.status = "Healthy"
  hs.message = "Serving; " .. text(degraded, "capacity is short of the demand")
  return hs
end

-- Nothing served yet, or the replicas of a rollout are not ready yet.
hs.status = "Progressing"
hs.message = text(ready, "Waiting for the model to be served")
return hs
