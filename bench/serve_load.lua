-- wrk script for bench/serve_load.sh: POST /predict with SST-2 sentences in turn (TEI's body,
-- one text per request), counting answers by status and by X-Model-Version, and printing one
-- JSON line of results at the end.
--   wrk -s bench/serve_load.lua ... http://127.0.0.1:PORT -- SENTENCES.tsv
local sentences = {}
local threads = {}

local function json_string(s)
    return '"' .. s:gsub('\\', '\\\\'):gsub('"', '\\"') .. '"'
end

function setup(thread)
    table.insert(threads, thread)
end

function init(args)
    local path = args[1]
    for line in io.lines(path) do
        local text = line:match("^(.-)\t")
        if text and text ~= "sentence" then
            table.insert(sentences, '{"inputs": ' .. json_string(text) .. '}')
        end
    end
    next_index = 1
    non200 = 0
    versions = {}
end

function request()
    local body = sentences[next_index]
    next_index = next_index % #sentences + 1
    return wrk.format("POST", "/predict", {["Content-Type"] = "application/json"}, body)
end

function response(status, headers, body)
    if status ~= 200 then non200 = non200 + 1 end
    local v = headers["X-Model-Version"] or ""
    versions[v] = (versions[v] or 0) + 1
end

function done(summary, latency, requests)
    local bad, by_version = 0, {}
    for _, t in ipairs(threads) do
        bad = bad + t:get("non200")
        for v, n in pairs(t:get("versions")) do by_version[v] = (by_version[v] or 0) + n end
    end
    local vs = {}
    for v, n in pairs(by_version) do table.insert(vs, json_string(v) .. ": " .. n) end
    local e = summary.errors
    io.write(string.format(
        '{"requests": %d, "seconds": %.3f, "throughput": %.1f, "p50_ms": %.3f, "p90_ms": %.3f, ' ..
        '"p99_ms": %.3f, "max_ms": %.3f, "non_200": %d, "socket_errors": %d, "versions": {%s}}\n',
        summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
        latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3,
        latency.max / 1e3, bad, e.connect + e.read + e.write + e.timeout, table.concat(vs, ", ")))
end
