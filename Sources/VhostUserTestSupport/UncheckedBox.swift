/// Carries a value a test knows to be used safely into a `@Sendable` closure (a thread body that only
/// reads it while the test waits, for example).
public struct UncheckedBox<T>: @unchecked Sendable {
    public let value: T
    public init(value: T) { self.value = value }
}
