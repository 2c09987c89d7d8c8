-- apiban in a Lua (KEMI) routing script: what tests/test_kamailio_operator.py runs.
-- Load with:  loadmodule "app_lua.so"
--             modparam("app_lua", "load", "/path/to/apiban.lua")
--             cfgengine "lua"
-- The reply reasons carry the return values, so the test can check them exactly.

function ksr_request_route()
	-- The source address of the packet: 1 listed, -1 not listed.
	local src = KSR.apiban.apiban_check()
	if src > 0 then
		KSR.sl.sl_send_reply(403, "Forbidden (apiban " .. src .. ")")
		KSR.x.exit()
	end

	-- Behind a trusted load balancer, the client's address arrives in a header:
	-- 1 listed, -1 not listed, -2 not an address.
	local real = KSR.hdr.get("X-Real-IP")
	if real ~= nil then
		local r = KSR.apiban.apiban_check_ip(real)
		if r > 0 then
			KSR.sl.sl_send_reply(403, "Forbidden (X-Real-IP apiban " .. r .. ")")
			KSR.x.exit()
		elseif r == -2 then
			KSR.sl.sl_send_reply(400, "Bad X-Real-IP (apiban " .. r .. ")")
			KSR.x.exit()
		end
	end

	if KSR.is_OPTIONS() then
		KSR.sl.sl_send_reply(200, "OK (apiban " .. src .. ")")
		KSR.x.exit()
	end
	if KSR.is_ACK() then
		KSR.x.exit()
	end
	KSR.sl.sl_send_reply(404, "Not Found")
end
