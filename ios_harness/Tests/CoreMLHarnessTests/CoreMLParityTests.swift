import Foundation
import XCTest

#if canImport(CoreML) && canImport(Vision)
import CoreMLHarness
import GoldenParity

/// Golden parity of a real exported model on this Mac, simulator or device. Needs MODEL_PATH (an .mlpackage, .mlmodel
/// or .mlmodelc of the export) and GOLDEN_DIR (its golden files); VARIANT is read from golden.json's artifact list
/// when the model's file name is there, else from the environment.
final class CoreMLParityTests: XCTestCase {
    private func inputs() throws -> (model: URL, golden: URL, variant: String) {
        let env = ProcessInfo.processInfo.environment
        guard let model = env["MODEL_PATH"], !model.isEmpty, let golden = env["GOLDEN_DIR"], !golden.isEmpty else {
            throw XCTSkip("MODEL_PATH and GOLDEN_DIR are not both set: run ios_harness/run_tests.sh on a Mac, or set "
                + "them in the scheme's Test environment (see ios_harness/README.md)")
        }
        let modelURL = URL(fileURLWithPath: model)
        let goldenURL = URL(fileURLWithPath: golden, isDirectory: true)
        let file = try GoldenFile.load(from: goldenURL)
        if let artifact = file.artifacts.first(where: { $0.path == modelURL.lastPathComponent }) {
            return (modelURL, goldenURL, artifact.variant)
        }
        guard let variant = env["VARIANT"], !variant.isEmpty else {
            throw GoldenError(file: modelURL.lastPathComponent, problem: "is not in golden.json's artifacts; set "
                + "VARIANT (fp16, int8, ...) to choose the gate")
        }
        return (modelURL, goldenURL, variant)
    }

    private func checkParity(_ route: ImageClassifier.Route) throws {
        let (model, golden, variant) = try inputs()
        let classifier = try GoldenRun.classifier(modelAt: model, golden: try GoldenFile.load(from: golden))
        let report = try GoldenRun.run(goldenDirectory: golden, classifier: classifier, variant: variant, route: route)
        print("\(model.lastPathComponent) through \(route.rawValue): \(report)")
        XCTAssertTrue(report.passed, "\(model.lastPathComponent) through \(route.rawValue): \(report)")
    }

    func testParityThroughCoreML() throws {
        try checkParity(.coreML)
    }

    func testParityThroughVision() throws {
        try checkParity(.vision)
    }
}
#else
final class CoreMLParityTests: XCTestCase {
    func testParityNeedsCoreML() throws {
        throw XCTSkip("Core ML and Vision exist only on Apple platforms: run golden parity on a Mac, simulator or "
            + "device (on Linux the Core ML harness compiles to nothing)")
    }
}
#endif
