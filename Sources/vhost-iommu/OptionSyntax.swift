import ArgumentParser
import VirtioIOMMU

/// Parsing of the device options' small grammars: numbers (decimal, 0x hex, 4k/2M/1G suffixes),
/// inclusive ranges `A-B`, and endpoint specifications.
enum OptionSyntax {
    /// A number: decimal, `0x` hexadecimal, or with a k/M/G/T suffix (binary multiples).
    static func number(_ text: String) -> UInt64? {
        let t = text.lowercased()
        if t.hasPrefix("0x") { return UInt64(t.dropFirst(2), radix: 16) }
        let multipliers: [Character: UInt64] = ["k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40]
        if let last = t.last, let multiplier = multipliers[last], let base = UInt64(t.dropLast()) {
            let (value, overflow) = base.multipliedReportingOverflow(by: multiplier)
            return overflow ? nil : value
        }
        return UInt64(t)
    }

    /// `A-B` (inclusive) or a single `A`.
    static func range(_ text: String) -> (UInt64, UInt64)? {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        switch parts.count {
        case 1: return number(String(parts[0])).map { ($0, $0) }
        case 2:
            guard let a = number(String(parts[0])), let b = number(String(parts[1])), a <= b else { return nil }
            return (a, b)
        default: return nil
        }
    }
}

/// `--endpoint IDS[,msi=A-B][,reserved=A-B]...[,msi=none][,pasid=BITS]`: endpoint IDs (a number or a
/// range), their reserved regions and PASID width. Without any region option an endpoint gets the x86
/// MSI window; without `pasid=` it has no PASID support.
struct EndpointSpecification: ExpressibleByArgument, Sendable {
    var first: UInt32
    var last: UInt32
    var regions: [ReservedRegion]
    var pasidBits = 0

    /// Endpoints at most one specification may name at once, to keep memory bounded.
    static let maxCount = 1 << 20

    init?(argument: String) {
        let fields = argument.split(separator: ",").map(String.init)
        guard let ids = fields.first, let (a, b) = OptionSyntax.range(ids), b <= UInt64(UInt32.max) else { return nil }
        first = UInt32(a)
        last = UInt32(b)
        var regions: [ReservedRegion] = []
        var sawRegionOption = false
        for field in fields.dropFirst() {
            let pair = field.split(separator: "=", maxSplits: 1).map(String.init)
            guard pair.count == 2 else { return nil }
            if pair[0] == "pasid" {
                guard let bits = Int(pair[1]), (0...20).contains(bits) else { return nil }
                pasidBits = bits
                continue
            }
            sawRegionOption = true
            if pair[1] == "none" { continue }
            guard let (start, end) = OptionSyntax.range(pair[1]), let range = IOVARange(first: start, last: end) else { return nil }
            switch pair[0] {
            case "msi": regions.append(ReservedRegion(.msi, range))
            case "reserved": regions.append(ReservedRegion(.reserved, range))
            default: return nil
            }
        }
        self.regions = sawRegionOption ? regions : [.x86MSIWindow]
    }

    static let everyRequesterID = EndpointSpecification(argument: "0-0xffff")!
}

struct RangeArgument: ExpressibleByArgument, Sendable {
    var first: UInt64
    var last: UInt64
    init?(argument: String) {
        guard let (a, b) = OptionSyntax.range(argument) else { return nil }
        first = a
        last = b
    }

    /// As `--help` shows a default: the way it is written on the command line.
    var defaultValueDescription: String { "0x\(String(first, radix: 16))-0x\(String(last, radix: 16))" }
}

struct NumberArgument: ExpressibleByArgument, Sendable {
    var value: UInt64
    init?(argument: String) {
        guard let value = OptionSyntax.number(argument) else { return nil }
        self.value = value
    }

    var defaultValueDescription: String { "0x\(String(value, radix: 16))" }
}
