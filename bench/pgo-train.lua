-- wrk script for bench/pgo.sh: the training load of the profile-guided build. Each connection
-- cycles through requests of several shapes, so that the profile is not one request's:
-- a bare GET, a GET with a query and fifteen headers (a browser's or an SDK's), a DELETE,
-- a POST with a 2 KiB body and one with a chunked body, and a GET with an x-request-id. (No
-- HEAD: wrk would wait for the body its response announces.)
local body = string.rep("spindle-", 256)
local many = {
  ["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) pgo-training",
  ["Accept"] = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
  ["Accept-Language"] = "en-GB,en;q=0.7",
  ["Accept-Encoding"] = "gzip, deflate, br",
  ["Cache-Control"] = "no-cache",
  ["Pragma"] = "no-cache",
  ["Referer"] = "http://127.0.0.1/catalogue/",
  ["Cookie"] = "session=3f9a1c0e5b7d4a2f; theme=dark",
  ["X-Client-Version"] = "4.12.0",
  ["X-Tenant"] = "acme",
  ["Traceparent"] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
  ["Sec-Fetch-Mode"] = "navigate",
  ["Sec-Fetch-Site"] = "same-origin",
  ["Upgrade-Insecure-Requests"] = "1",
}
local requests = {}
local n = 0

init = function(args)
  requests = {
    wrk.format("GET", "/"),
    wrk.format("GET", "/catalogue/items?id=12345&sort=price", many),
    wrk.format("DELETE", "/api/sessions/7"),
    wrk.format("POST", "/api/orders", { ["Content-Type"] = "application/json" }, body),
    -- Written out: wrk.format would add a content-length beside the transfer-encoding.
    string.format("POST /api/upload HTTP/1.1\r\nHost: %s:%s\r\nTransfer-Encoding: chunked\r\n\r\n" ..
      "%x\r\n%s\r\n0\r\n\r\n", wrk.host, wrk.port, #body, body),
    wrk.format("GET", "/api/users/42", { ["X-Request-Id"] = "0af7651916cd43dd8448eb211c80319c" }),
  }
end

request = function()
  n = n + 1
  return requests[(n % #requests) + 1]
end
