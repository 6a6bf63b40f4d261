//! Human sizes for the CLI (`512M`, `1G`, `1GiB`, `2048MiB`) and the whole-MiB rule of the API.
//! Units are binary: `M` and `MiB` both mean 2^20 bytes, as in Proxmox and QEMU.

/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;

/// Parses `N[K|M|G|T][i][B]` (case-insensitive) into bytes; a bare number means MiB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("{s:?} is not a size (try 512M or 1G)"));
    }
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is too large"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mi" | "mib" => MIB,
        "b" => 1,
        "k" | "kb" | "ki" | "kib" => 1 << 10,
        "g" | "gb" | "gi" | "gib" => GIB,
        "t" | "tb" | "ti" | "tib" => 1 << 40,
        _ => return Err(format!("{s:?} has an unknown unit (use K, M, G or T)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Renders bytes in the largest binary unit that divides them evenly.
pub fn format_size(bytes: u64) -> String {
    for (unit, m) in [
        ("TiB", 1u64 << 40),
        ("GiB", GIB),
        ("MiB", MIB),
        ("KiB", 1 << 10),
    ] {
        if bytes >= m && bytes.is_multiple_of(m) {
            return format!("{}{unit}", bytes / m);
        }
    }
    if bytes >= GIB {
        return format!("{:.1}GiB", bytes as f64 / GIB as f64);
    }
    if bytes >= MIB {
        return format!("{:.1}MiB", bytes as f64 / MIB as f64);
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_size("512"), Ok(512 * MIB));
        assert_eq!(parse_size("512M"), Ok(512 * MIB));
        assert_eq!(parse_size("1G"), Ok(GIB));
        assert_eq!(parse_size("1GiB"), Ok(GIB));
        assert_eq!(parse_size("1536k"), Ok(1536 * 1024));
        assert!(parse_size("abc").is_err());
        assert!(parse_size("1X").is_err());
        assert!(parse_size("99999999999999999999").is_err());
    }

    #[test]
    fn formats_units() {
        assert_eq!(format_size(GIB), "1GiB");
        assert_eq!(format_size(1536 * MIB), "1536MiB");
        assert_eq!(format_size(7), "7B");
        assert_eq!(format_size(GIB + GIB / 2 + 1), "1.5GiB");
    }
}
