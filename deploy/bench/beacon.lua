-- wrk script: POST N-event beacons (a realistic mix of types; N = the script argument after `--`,
-- default 20), a fresh view_id per request.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["User-Agent"] = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"

local counter = 0
local events_per_beacon = 20

init = function(args)
  if args[1] then events_per_beacon = tonumber(args[1]) end
end
local t0 = 1700000000000

local function event(view, seq)
  local ts = t0 + seq * 500
  local kind = seq % 5
  if seq == 0 then
    return string.format('{"view_id":"%s","seq":0,"type":"viewstart","ts":%d,"video_id":"v%d","cdn":"fastly","stream_type":"vod","player_name":"hls.js","player_version":"1.5.7"}', view, ts, counter % 1000)
  elseif kind == 1 then
    return string.format('{"view_id":"%s","seq":%d,"type":"segment","ts":%d,"playhead_ms":%d,"host":"cdn.example.com","bytes":1048576,"duration_ms":120,"ttfb_ms":30,"cache":"hit"}', view, seq, ts, seq * 500)
  elseif kind == 2 then
    return string.format('{"view_id":"%s","seq":%d,"type":"quality_change","ts":%d,"playhead_ms":%d,"bitrate_kbps":2500,"width":1280,"height":720}', view, seq, ts, seq * 500)
  else
    return string.format('{"view_id":"%s","seq":%d,"type":"heartbeat","ts":%d,"playhead_ms":%d}', view, seq, ts, seq * 500)
  end
end

request = function()
  counter = counter + 1
  local view = string.format("bench-%d-%d", math.random(1, 1000000000), counter)
  local parts = {}
  for i = 0, events_per_beacon - 1 do
    parts[#parts + 1] = event(view, i)
  end
  local body = '{"sent_at":1700000010000,"events":[' .. table.concat(parts, ",") .. ']}'
  return wrk.format(nil, nil, nil, body)
end

done = function(summary, latency, requests)
  io.write(string.format("RESULT rps=%.1f p50_ms=%.3f p99_ms=%.3f errors=%d non2xx=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
