-- Orthanc auto-routing to limbscan: every plain radiograph (CR, DX) stored in Orthanc is sent to
-- the "limbscan" modality of orthanc.json as it arrives. limbscan's results come back as an SR
-- (Modality SR) and a Secondary Capture (Modality OT), so they are never sent on again.
-- tests/node/test_orthanc.py runs this very file.
function OnStoredInstance(instanceId, tags, metadata, origin)
  if origin["RequestOrigin"] ~= "Lua" and (tags["Modality"] == "CR" or tags["Modality"] == "DX") then
    SendToModality(instanceId, "limbscan")
  end
end
