//! Dates the gateway writes into messages (RFC 5322 §3.3), and the clock they are read from.

/// The fields of an RFC 5322 date of Unix seconds, in UTC: weekday, day, month, year, hour,
/// minute, second.
struct Civil {
    wd: &'static str,
    day: u64,
    mon: &'static str,
    year: i64,
    h: u64,
    m: u64,
    s: u64,
}

fn civil(unix: u64) -> Civil {
    let days = (unix / 86400) as i64;
    let secs = unix % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    Civil {
        wd: WD[days.rem_euclid(7) as usize],
        day: day as u64,
        mon: MON[(month - 1) as usize],
        year,
        h: secs / 3600,
        m: secs / 60 % 60,
        s: secs % 60,
    }
}

/// [`rfc5322_date`] through `format!`: for years of other than four digits.
fn formatted(c: &Civil) -> String {
    let Civil { wd, day, mon, year, h, m, s } = c;
    format!("{wd}, {day:02} {mon} {year} {h:02}:{m:02}:{s:02} +0000")
}

/// Formats Unix seconds as an RFC 5322 date in UTC: `Sun, 22 Nov 2026 04:05:16 +0000`.
pub fn rfc5322_date(unix: u64) -> String {
    let c = civil(unix);
    if !(1000..=9999).contains(&c.year) {
        return formatted(&c);
    }
    let Civil { wd, day, mon, year, h, m, s } = c;
    // Every message gets one (its Received: field): written digit by digit, not through
    // `format!` (a tenth of the instructions).
    let two = |out: &mut String, n: u64| {
        out.push(char::from(b'0' + (n / 10 % 10) as u8));
        out.push(char::from(b'0' + (n % 10) as u8));
    };
    let mut out = String::with_capacity(31);
    out.push_str(wd);
    out.push_str(", ");
    two(&mut out, day);
    out.push(' ');
    out.push_str(mon);
    out.push(' ');
    two(&mut out, year as u64 / 100);
    two(&mut out, year as u64);
    out.push(' ');
    two(&mut out, h);
    out.push(':');
    two(&mut out, m);
    out.push(':');
    two(&mut out, s);
    out.push_str(" +0000");
    out
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Now, in Unix milliseconds (spool timestamps).
pub fn now_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(1_795_320_316), "Sun, 22 Nov 2026 04:05:16 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(rfc5322_date(253_402_300_799), "Fri, 31 Dec 9999 23:59:59 +0000");
        assert_eq!(rfc5322_date(253_402_300_800), "Sat, 01 Jan 10000 00:00:00 +0000");
    }

    /// The digit-by-digit writer against `format!` of the same fields, for a second in every
    /// day from 1970 to 2400 and every second of one day (the fields themselves: `dates`).
    #[test]
    fn written_as_format_would() {
        let reference = |unix: u64| formatted(&civil(unix));
        for day in 0..(430 * 366) {
            let unix = day * 86_400 + (day * 7919) % 86_400;
            assert_eq!(rfc5322_date(unix), reference(unix));
        }
        for sec in 0..86_400 {
            let unix = 1_795_320_000 / 86_400 * 86_400 + sec;
            assert_eq!(rfc5322_date(unix), reference(unix));
        }
        // Days and months follow each other without a gap: the day after the last of a month
        // is the 1st of the next.
        let mut prev = rfc5322_date(0);
        for day in 1..(430 * 366) {
            let d = rfc5322_date(day * 86_400);
            let (pd, d1) = (&prev[5..7], &d[5..7]);
            assert!(d1 == "01" || d1.parse::<u32>().unwrap() == pd.parse::<u32>().unwrap() + 1, "{prev} -> {d}");
            prev = d;
        }
    }
}
