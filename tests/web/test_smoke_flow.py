from tests.conftest import phone, wait_for


async def test_message_reaches_socket_and_is_delivered(server):
    key = server.client_key("sms")
    gw_key = await server.register("phone-1")
    async with phone(server, gw_key) as p:
        sent = await server.send(key, message="hello there")
        sms = await p.next_sms()
        assert sms["action"] == "send_sms"
        assert sms["message_id"] == sent["message_id"]
        assert sms["recipient"] == "+14155552671"
        assert sms["message"] == "hello there"
        await p.report(sms["message_id"], "sent")
        await p.report(sms["message_id"], "delivered")
        await wait_for(lambda: server.sql("SELECT 1 FROM messages WHERE message_id = %s AND status = 'delivered'",
                                          (sent["message_id"],)))
    status = await server.status(key, sent["message_id"])
    assert status["status"] == "delivered"
    assert status["sent_at"].endswith("Z") and status["delivered_at"].endswith("Z")
