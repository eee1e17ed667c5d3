//! Destinations do not hold each other back: a burst of mail to a slow destination waits for
//! that destination's room (`queue.max_per_destination`) without occupying the delivery slots
//! (`queue.max_concurrent`) that mail to other destinations needs.

use std::time::Duration;

use mailgate_tests::clients::Raw;
use mailgate_tests::gateway::Gateway;
use mailgate_tests::sink::Sink;

const T: Duration = Duration::from_secs(60);

#[test]
fn a_burst_to_a_slow_destination_does_not_hold_back_another() {
    let slow = Sink::start();
    slow.set_data_delay(Duration::from_secs(1));
    let fast = Sink::start();
    let gw = Gateway::start(&format!(
        "[queue]\nmax_concurrent = 4\nmax_per_destination = 1\n\n[routes]\n\
         \"slow.test\" = {{ type = \"smarthost\", host = \"127.0.0.1\", port = {}, tls = \"none\" }}\n\
         \"fast.test\" = {{ type = \"smarthost\", host = \"127.0.0.1\", port = {}, tls = \"none\" }}\n",
        slow.port(),
        fast.port()
    ));
    const BURST: usize = 12;
    for i in 0..BURST {
        Raw::deliver(gw.port, "a@sender.test", &[&format!("u{i}@slow.test")], "Subject: slow\r\n\r\nx\r\n");
    }
    // One connection at a time to the slow destination, a second per message: the burst takes
    // twelve seconds. Mail to another destination goes meanwhile, not after it.
    Raw::deliver(gw.port, "a@sender.test", &["v@fast.test"], "Subject: fast\r\n\r\nx\r\n");
    fast.wait_for_rcpt("v@fast.test", T);
    let done = slow.data_ends();
    assert!(done < BURST / 2, "the fast destination waited for {done} of {BURST} slow deliveries");
    // And the burst itself is delivered in full, one at a time.
    assert_eq!(slow.wait_for(BURST, T).len(), BURST);
}
